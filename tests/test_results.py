"""The committed reproduction (docs/results/): its settings are its recipe's, its evaluation is
the one docs/benchmarks.md quotes, and `pyro-vae evaluate` rebuilds it from the files alone."""

import csv
import json
from pathlib import Path

import pytest
import torch
from test_cli import run_main

from pyro_vae import load_run
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.rollouts import rollout_goals, rollout_metrics
from pyro_vae.runs.code_prior import with_fitted_prior
from pyro_vae.runs.config_file import read_config_file
from pyro_vae.runs.folder import Run

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "docs" / "results" / "burda2016-vae-k1"
RECIPE = ROOT / "recipes" / "burda2016-vae-k1.toml"


def trained_by_its_recipe(result: Path, recipe: Path) -> tuple[dict, list[dict]]:
    """A committed run's config.json and metrics rows, checked: every setting of ``recipe`` is
    the run's, one metrics row per epoch, and the checkpoint is the last epoch's."""
    config = json.loads((result / "config.json").read_text())
    for name, value in read_config_file(recipe).items():
        assert config[name] == (list(value) if isinstance(value, tuple) else value), name
    rows = Run(result).read_metrics()
    assert [int(r["epoch"]) for r in rows] == list(range(1, config["epochs"] + 1))
    assert Run(result).load_checkpoint()["epoch"] == config["epochs"]
    return config, rows


def test_the_committed_run_was_trained_with_its_recipe():
    config, _ = trained_by_its_recipe(RESULT, RECIPE)
    assert config["epochs"] == 3280


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


# --- the TD-VAE on moving MNIST (issue 34) ----------------------------------------------------
TDVAE = ROOT / "docs" / "results" / "tdvae-moving-mnist"


def test_the_committed_tdvae_run_is_its_recipe_trained_to_the_end():
    _, rows = trained_by_its_recipe(TDVAE, ROOT / "recipes" / "tdvae-moving-mnist.toml")
    hours = sum(float(r["seconds"]) for r in rows) / 3600
    assert f"{hours:.1f} h" in (ROOT / "docs" / "tdvae.md").read_text()


def test_the_committed_rollouts_are_scored_as_the_docs_say():
    """rollouts.json is examples/tdvae_rollouts.py's output on the committed checkpoint; its
    goals follow from its numbers, and docs/tdvae.md quotes them."""
    result = json.loads((TDVAE / "rollouts.json").read_text())
    config = json.loads((TDVAE / "config.json").read_text())
    assert result["epoch"] == config["epochs"]
    assert (result["rollout_sequences"], result["rollout_samples"]) == (1000, 5)
    assert result["rollout_context"] == 10 and len(result["rollout_bce"]) == 10
    assert result["goals"] == rollout_goals(result)
    docs = (ROOT / "docs" / "tdvae.md").read_text()
    assert f"{result['rollout_direction']:.1%}" in docs
    for h in range(10):
        assert f"{result['rollout_bce'][h]:.1f}" in docs
        assert f"{result['identity_rollout'][h]:.1%}" in docs
        assert f"{result['displacement'][h]:.2f}" in docs
    assert (TDVAE / "figures" / "rollouts.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_committed_tdvae_rolls_out_from_its_files(real_data_dir):
    """The checkpoint alone, on 100 of the same test sequences with 2 rollouts each: the
    direction and the displacement stay near the committed figures (another subset and fewer
    draws: a tolerance, not equality)."""
    result = json.loads((TDVAE / "rollouts.json").read_text())
    model, data, _ = load_run(TDVAE, str(real_data_dir))
    torch.manual_seed(0)
    subset = rollout_metrics(model, data.test[:100], samples=2)
    assert subset["rollout_direction"] >= result["rollout_direction"] - 0.05
    for got, committed in zip(subset["displacement"], result["displacement"], strict=True):
        assert abs(got - committed) < 0.75


# --- the VQ-VAE on MNIST and the priors fitted to its codes (issue 36) --------------------------
VQVAE = ROOT / "docs" / "results" / "vqvae-mnist"
PRIORS = (
    "uniform",
    "categorical",
    "transformer-4",
    "transformer-num_layers-4",
    "transformer-num_layers-4-width-96",
    "transformer-num_layers-4-width-96-grey",
)
BEST = "transformer-num_layers-4-width-96"  # the best bound: the recipe's prior


def _prior_results() -> dict[str, dict]:
    return {n: json.loads((VQVAE / "priors" / n / "eval.json").read_text()) for n in PRIORS}


def test_the_committed_vqvae_run_is_its_recipe_with_the_docs_bounds():
    config, rows = trained_by_its_recipe(VQVAE, ROOT / "recipes" / "vqvae-mnist.toml")
    docs = (ROOT / "docs" / "vqvae.md").read_text()
    results = _prior_results()
    for name, result in results.items():
        assert (result["num_test"], result["stage1_epoch"]) == (10000, config["epochs"]), name
        for key in ("test_bound", "test_code_nll"):
            assert f"{result[key]:.2f}" in docs, (name, key)
    epochs = {name: result["epochs"] for name, result in results.items()}
    assert [epochs[n] for n in PRIORS[2:]] == [30, 31, 18, 18]
    assert max(results, key=lambda n: results[n]["test_bound"]) == BEST
    assert results[PRIORS[-1]]["train_codes"] == "grey"
    stage1 = json.loads((VQVAE / "eval.json").read_text())
    assert stage1["num_test"] == 10000 and f"{stage1['codes_used']} of 16" in docs
    # the recipe's time: stage 1 and the best prior's fit, as docs/vqvae.md states it
    prior_rows = csv.DictReader((VQVAE / "priors" / BEST / "metrics.csv").read_text().splitlines())
    fit = sum(float(r["seconds"]) for r in prior_rows)
    total = sum(float(r["seconds"]) for r in rows) + fit
    assert f"({total:.0f} s)" in docs and f"{fit:.0f} s" in docs and total / 3600 <= 2


def test_the_committed_sample_scores_are_the_docs():
    """sample_quality.json is examples/sample_quality.py's output for this run and the Burda
    VAE; docs/vqvae.md quotes every inception score in it."""
    scores = json.loads((VQVAE / "sample_quality.json").read_text())
    docs = (ROOT / "docs" / "vqvae.md").read_text()
    labels = " ".join(scores)
    for prior in PRIORS:
        assert f"{prior} prior" in labels
    tempered = json.loads((VQVAE / "sample_quality_temperatures.json").read_text())
    assert sum("temperature" in label for label in tempered) == 4
    for label, row in (scores | tempered).items():
        assert f"{row['inception_score']:.2f}" in docs, label


@pytest.mark.slow
def test_the_committed_vqvae_bound_recomputes_from_its_files(real_data_dir):
    """The transformer prior's bound on the full test set, from the checkpoint and prior.pt
    alone: the encoder is deterministic and so is the bound (float rounding aside)."""
    model, data, _ = load_run(VQVAE, str(real_data_dir))
    model = with_fitted_prior(model, VQVAE, BEST)
    bound = evaluate_elbo(model, data.test)
    committed = _prior_results()[BEST]
    assert bound["elbo"] == pytest.approx(committed["test_bound"], abs=0.01)
    assert bound["kl"] == pytest.approx(committed["test_code_nll"], abs=0.01)


@pytest.mark.slow
def test_two_binarizations_of_a_test_image_differ_in_a_third_of_their_codes(real_data_dir):
    """docs/vqvae.md's reason for --train-codes grey: the codes of a binarized draw carry the
    draw's noise (34% of positions differ between two draws of the same image)."""
    from pyro_vae.data.images import load_images
    from pyro_vae.runs.code_prior import code_grids

    model, _, _ = load_run(VQVAE, str(real_data_dir))
    grey = load_images("mnist", train=False, data_dir=str(real_data_dir))[:2000]
    first, second = (
        code_grids(model, torch.bernoulli(grey, generator=torch.Generator().manual_seed(seed)))
        for seed in (1, 2)
    )
    differ = (first != second).float().mean().item()
    assert 0.30 < differ < 0.38
    assert "differ in 34% of" in (ROOT / "docs" / "vqvae.md").read_text()
