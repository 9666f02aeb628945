"""Command-line behaviour: every mistake a user can make is one line on stderr and exit 2."""

import subprocess
import sys

import pytest
from conftest import HANG_GUARD_S

from pyro_vae.cli.main import main


def run_main(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits on bad flags
        code = exc.code
    return code, capsys.readouterr().err


BAD_FLAGS = [
    (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
    (["--epochs", "0"], "'0' is not a positive integer"),
    (["--batch-size", "-5"], "'-5' is not a positive integer"),
    (["--lr=-1e-3"], "'-1e-3' is not a positive number"),
    (["--lr", "-0.1"], "'-0.1' is not a positive number"),
    (["--lr", "fast"], "'fast' is not a positive number"),
    (["--z-dim", "2.5"], "'2.5' is not a positive integer"),
    (["--limit-train", "0"], "'0' is not a positive integer"),
    (["--hidden-dims", "400", "0"], "'0' is not a positive integer"),
    (["--elbo", "renyi"], "invalid choice: 'renyi'"),
    (["--binarize", "maybe"], "invalid choice: 'maybe'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_flags_give_one_line_and_exit_2(capsys, flags, message):
    code, err = run_main(capsys, "train", *flags)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_data_folder(capsys, tmp_path):
    code, err = run_main(
        capsys,
        "train",
        "--data-dir",
        str(tmp_path / "absent"),
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and err.count("\n") == 1
    assert "does not exist" in err and "PYRO_VAE_DATA_DIR" in err


def test_data_folder_with_wrong_files(capsys, tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "notes.txt").write_text("not mnist")
    code, err = run_main(
        capsys, "train", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "run")
    )
    assert code == 2 and "no mnist files under" in err and err.count("\n") == 1


def test_existing_run_folder_is_refused_without_overwrite(capsys, fake_data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("saved work")
    code, err = run_main(
        capsys,
        "train",
        "--data-dir",
        str(fake_data_dir),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--quiet",
    )
    assert code == 2 and "already holds files" in err and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "saved work"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_bernoulli_likelihood_on_grey_levels_is_refused(capsys, fake_data_dir, tmp_path):
    code, err = run_main(
        capsys,
        "train",
        "--data-dir",
        str(fake_data_dir),
        "--binarize",
        "none",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and "Bernoulli likelihood needs binary data" in err


def test_train_command_runs_and_prints_a_summary(capsys, fake_data_dir, tmp_path):
    code = main(
        [
            "train",
            "--data-dir",
            str(fake_data_dir),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--z-dim",
            "2",
            "--hidden-dims",
            "16",
            "--quiet",
            "--binarize",
            "none",
            "--likelihood",
            "gaussian",
            "--val-size",
            "50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "test ELBO" in out and "run folder" in out
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "--data-dir",
            str(tmp_path / "absent"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("pyro-vae: error:") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_every_flag_of_every_command_has_help_that_shows_its_default():
    """``--help`` explains every flag and says what it is when not given."""
    import argparse

    from pyro_vae.cli.main import command_parser

    parser = command_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            assert action.help, f"{name} {flag} has no help"
            if action.default is not None and action.default is not False:
                assert "default" in command._get_formatter()._get_help_string(action), flag
        assert "(default: 128)" in text or name in ("evaluate", "plot")  # --batch-size
    assert "(default: 5000)" in " ".join(commands.choices["evaluate"].format_help().split())
