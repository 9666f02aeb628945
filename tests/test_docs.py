"""Python code in the documentation runs, so it cannot rot.

Every ```python block in docs/*.md is executed. Excerpts that cannot run on their own (a
fragment of an example script, which its own test runs) are fenced as ```py instead.
"""

import re
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
BLOCKS = [
    pytest.param(code, id=f"{path.name}:{n}")
    for path in DOCS
    for n, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


@pytest.mark.parametrize("code", BLOCKS)
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})


def test_documentation_site_builds_with_warnings_as_errors(tmp_path):
    """mkdocs (mkdocs.yml: strict) fails on broken links, pages missing from the nav and
    docstrings that do not match their signatures."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        ["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_public_functions_and_classes_have_docstrings():
    import inspect

    import pyro_vae

    missing = [
        name
        for name in pyro_vae.__all__
        if (inspect.isfunction(obj := getattr(pyro_vae, name)) or inspect.isclass(obj))
        and not inspect.getdoc(obj)
    ]
    assert not missing, missing


def test_files_the_docs_name_exist():
    """Repository paths written in backticks in README.md and docs/*.md (``docs/x.md``,
    ``examples/x.py``, ``pyro_vae/a/b.py``, ``benchmarks/x.py``) and the targets of their links
    and images exist, so a renamed or missing file fails here instead of misleading a reader."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(
        r"`((?:docs/|examples/|pyro_vae/|benchmarks/|tests/)[\w/.-]+\.(?:md|py|png))"
        r"|\]\(((?:docs/|figures/)[\w/.-]+\.(?:md|png))"  # links and images
    )
    missing = []
    for path in [root / "README.md", *DOCS]:
        for name in (a or b for a, b in pattern.findall(path.read_text())):
            base = path.parent if name.startswith("figures/") else root
            if not (base / name).exists():
                missing.append(f"{path.name}: {name}")
    assert not missing, missing


def _gallery():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "make_gallery.py"
    spec = importlib.util.spec_from_file_location("make_gallery", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gallery_page_is_the_one_the_gallery_script_writes():
    gallery = _gallery()
    assert (gallery.DOCS / "gallery.md").read_text() == gallery.gallery_page()


def test_every_figure_in_the_docs_is_made_by_a_gallery_entry():
    gallery = _gallery()
    made = {name for entry in gallery.GALLERY for name in entry.figures.values()}
    present = {p.name for p in (gallery.DOCS / "figures").glob("*.png")}
    assert present == made, (present - made, made - present)


@pytest.mark.slow
def test_gallery_regenerates_an_entry(real_data_dir, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "docs" / "make_gallery.py"
    command = [sys.executable, str(script), "--quick", "--only", "svi-default"]
    command += ["--docs", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = sorted(p.name for p in (tmp_path / "docs" / "figures").iterdir())
    assert made == sorted(_gallery().GALLERY[0].figures.values())
    assert (tmp_path / "docs" / "gallery.md").is_file()


@pytest.mark.parametrize(
    "latex, spaced",
    [
        (r"\log p(x)", True),
        (r"\log \frac{1}{K}", True),
        (r"\mathbb{E}\big[\log p_\theta(x)\big]", True),
        (r"\log(x)", False),
        (r"\log \big(x\big)", False),
        (r"\exp[a]", False),
    ],
)
def test_an_operator_name_is_set_apart_from_what_it_applies_to(latex, spaced):
    """As TeX does: a thin space after log or exp, none before an opening bracket."""
    pytest.importorskip("latex2mathml")
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "_hooks" / "mathml.py"
    spec = importlib.util.spec_from_file_location("mathml_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert (hook.THIN_SPACE in hook._mathml(latex, "inline", page=None)) == spaced


def test_display_formulas_set_the_limits_of_min_and_max_under_them_as_tex_does():
    """``$$\\min_{f,g} ...$$``: the limits under min (as under a sum); inline, beside it."""
    pytest.importorskip("latex2mathml")
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "_hooks" / "mathml.py"
    spec = importlib.util.spec_from_file_location("mathml_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    block = hook._mathml(r"\min_{f_{a}, g} \max_\theta x_{n}", "block", page=None)
    assert block.count("<munder><mo") == 2 and "<msub><mo" not in block
    assert block.count("<msub>") == block.count("</msub>") == 2  # f_a and x_n stay subscripts
    assert "<msub><mo" in hook._mathml(r"\min_{f, g} x", "inline", page=None)
