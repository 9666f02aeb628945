"""The committed reproduction (docs/results/): its settings are its recipe's, its evaluation is
the one docs/benchmarks.md quotes, and `pyro-vae evaluate` rebuilds it from the files alone."""

import json
from pathlib import Path

import pytest
from test_cli import run_main

from pyro_vae.runs.config_file import read_config_file
from pyro_vae.runs.folder import Run

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "docs" / "results" / "burda2016-vae-k1"
RECIPE = ROOT / "recipes" / "burda2016-vae-k1.toml"


def test_the_committed_run_was_trained_with_its_recipe():
    config = json.loads((RESULT / "config.json").read_text())
    for name, value in read_config_file(RECIPE).items():
        assert config[name] == (list(value) if isinstance(value, tuple) else value), name


def test_the_committed_evaluation_is_the_full_test_set_at_k_5000():
    result = json.loads((RESULT / "eval.json").read_text())
    rows = Run(RESULT).read_metrics()
    assert (result["num_test"], result["iw_samples"], result["epoch"]) == (10000, 5000, 3280)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 3281))
    assert Run(RESULT).load_checkpoint()["epoch"] == 3280
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"{result['iwae']:.2f}" in benchmarks  # the number the docs quote


@pytest.mark.slow
def test_the_committed_run_evaluates_from_its_files(real_data_dir, tmp_path, capsys):
    args = ["evaluate", str(RESULT), "--iw-samples", "20", "--limit", "50", "--quiet"]
    code, err = run_main(capsys, *args, "--out", str(tmp_path))
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["epoch"] == 3280 and result["num_test"] == 50
    assert not (RESULT / ".pyro-vae-write-test").exists()
