"""The commands README.md and docs/ show, checked against the code, so that the pages cannot
drift from it: every ``pyro-vae ...``, ``python -m pyro_vae ...``, ``torchrun ... -m pyro_vae
...`` and ``python examples/train_svi.py ...`` line of a fenced shell block is parsed by the real
parser (a renamed or removed flag fails here), every script, recipe or committed run a command
names exists, and README's first-look command runs end to end (on the tiny fake MNIST)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

from pyro_vae.cli.main import command_parser, train_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_OURS = {"pip", "pytest", "export", "mkdocs", "apt-get", "cd", "git"}
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def shell_commands(page: Path) -> list[list[str]]:
    """Each command of the page's bash blocks as argv: continuation lines joined, ``&&`` chains
    split, comments and leading ``VAR=value`` settings dropped, ``$VAR`` of a variable the block
    set replaced."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                for name, value in variables.items():
                    part = part.replace(f"${name}", value)
                words = shlex.split(part, comments=True)
                if len(words) == 1 and (match := ASSIGNMENT.match(words[0])):
                    variables[match.group(1)] = match.group(2)
                    continue
                while words and ASSIGNMENT.match(words[0]):
                    words = words[1:]
                if words:
                    commands.append(words)
    return commands


def pyro_vae_argv(words: list[str]) -> list[str] | None:
    """The arguments after the ``pyro-vae`` command in ``words``, or None for another program."""
    for i, word in enumerate(words):
        if word == "pyro-vae":
            return words[i + 1 :]
        if word == "pyro_vae" and i > 0 and words[i - 1] == "-m":
            return words[i + 1 :]
    return None


DOCUMENTED = [
    pytest.param(words, id=f"{page.name}: {' '.join(words)[:70]}")
    for page in PAGES
    for words in shell_commands(page)
    if words[0] not in NOT_OURS
]


def test_the_pages_show_commands():
    assert len(DOCUMENTED) >= 40


@pytest.mark.parametrize("words", DOCUMENTED)
def test_a_documented_command_parses_and_names_files_that_exist(words):
    for word in words:  # scripts, recipes and committed runs of the repository
        if word.startswith(("examples/", "benchmarks/", "recipes/", "docs/")):
            assert (ROOT / word).exists(), f"{word} does not exist"
    argv = pyro_vae_argv(words)
    try:
        if argv is not None:
            command_parser().parse_args(argv)
        elif words[:2] == ["python", "examples/train_svi.py"]:
            train_parser().parse_args(words[2:])
        else:
            assert words[0] in ("python", "torchrun"), f"unknown program {words[0]}"
    except SystemExit as exc:  # argparse's refusal, printed on stderr
        raise AssertionError(f"{' '.join(words)}: the parser refused it") from exc


def test_the_parser_check_can_fail():
    with pytest.raises(SystemExit):
        command_parser().parse_args(["train", "--no-such-flag"])
    assert pyro_vae_argv(["torchrun", "--nproc_per_node=2", "-m", "pyro_vae", "train"]) == ["train"]


def test_readmes_first_look_runs_and_writes_figures(fake_data_dir, tmp_path):
    first = next(w for w in shell_commands(ROOT / "README.md") if "examples/train_svi.py" in w)
    assert "--limit-train" in first and "--epochs" in first  # the quick look, not the full run
    env = {"PYRO_VAE_DATA_DIR": str(fake_data_dir), "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, str(ROOT / first[1]), *first[2:], "--quiet"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in (run / "figures").iterdir()} >= {"samples.png", "curves.png"}
