"""Monte Carlo EM: HMC E-steps sample the exact posterior of a linear-Gaussian model, MCEM raises
its exact marginal likelihood, E- and M-steps touch only what they should, the Gaussian proposal
fitted to chains estimates log p(x), and ``--algo mcem`` runs, resumes and compares end to end."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from pyro_vae import TrainConfig, UserError
from pyro_vae.cli.main import main
from pyro_vae.evaluation.metrics import log_likelihood
from pyro_vae.infer.mcem import MCEMTrainer, complete_data_log_likelihood
from pyro_vae.infer.posterior_sampling import ChainSettings, PosteriorEncoder, sample_posterior
from tests.test_em import (
    bitwise_equal,
    exact_log_px,
    linear_gaussian_data,
    linear_gaussian_vae,
    snapshot,
)
from tests.test_metrics import S, linear_gaussian


def exact_posterior(vae, x):
    """Mean (N, Z) and standard deviation (Z,) of p(z|x) in the model of ``linear_gaussian``."""
    w, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    cov = torch.linalg.inv(torch.eye(w.shape[1]) + w.T @ w / S**2)
    return (x - b) @ (cov @ w.T / S**2).T, cov.diagonal().sqrt()


@pytest.mark.parametrize("kernel", ["hmc", "nuts"])
def test_chain_samples_match_the_exact_posterior(kernel):
    vae, x, _ = linear_gaussian(exact_posterior=True)
    mean, sd = exact_posterior(vae, x)
    settings = ChainSettings(kernel=kernel, warmup=100, samples=300)
    samples, step_size = sample_posterior(vae.model, x, torch.zeros_like(mean), settings)
    assert samples.shape == (300, *mean.shape) and step_size > 0
    # 40 points x 2 dims x 300 correlated draws: Monte Carlo error of the standardized
    # moments is a few hundredths; the thresholds leave several standard errors.
    standardized = (samples - mean) / sd
    assert standardized.mean().abs() < 0.1
    assert 0.85 < standardized.var().item() < 1.15
    per_point_error = (samples.mean(0) - mean) / sd  # each point's own posterior mean
    assert per_point_error.abs().mean() < 0.2


def test_fitted_proposal_estimates_the_exact_log_likelihood():
    vae, x, exact = linear_gaussian(exact_posterior=False)  # a poor encoder, replaced below
    vae.encoder = PosteriorEncoder(vae.model, ChainSettings(warmup=100, samples=50), z_dim=2)
    estimate = log_likelihood(vae, x, num_samples=200)
    error = estimate - exact
    # Measured: mean |error| 0.047, max 0.23 nats, mean error -0.014 (the bound's gap); with
    # 50 warm-up iterations one chain mixes badly and its point is off by 0.86.
    assert error.abs().mean() < 0.1 and error.abs().max() < 0.5
    assert abs(error.mean()) < 0.05


def test_proposal_is_fitted_once_per_point_and_model_state():
    vae, x, _ = linear_gaussian(exact_posterior=True)
    encoder = PosteriorEncoder(vae.model, ChainSettings(warmup=5, samples=5), z_dim=2, chunk=7)
    loc, scale = encoder(x)
    again = encoder(torch.cat([x[10:20], x[:10]]))  # same points, other order: cached
    assert torch.equal(again[0], torch.cat([loc[10:20], loc[:10]]))
    with torch.no_grad():
        vae.decoder.bias.add_(0.1)  # the model changed: chains run again
    assert not torch.equal(encoder(x)[0], loc)
    assert scale.shape == loc.shape == (40, 2) and (scale > 0).all()


def test_e_step_leaves_the_model_bitwise_unchanged_and_m_step_changes_only_it():
    x = linear_gaussian_data(n=60)
    vae = linear_gaussian_vae(x.shape[1])
    trainer = MCEMTrainer(vae, num_data=60, chain=ChainSettings(warmup=5, samples=3), lr=0.05)
    model_before = snapshot(vae.model_parameters())
    guide_before = snapshot(vae.guide_parameters())
    index = torch.arange(20)
    z = trainer.e_step(x[index], index)
    assert z.shape == (3, 20, 1)
    assert bitwise_equal(vae.model_parameters(), model_before)
    assert all(p.grad is None for p in vae.parameters())
    assert trainer.started[:20].all() and not trainer.started[20:].any()
    assert torch.equal(trainer.chain_state[:20], z[-1])  # the next E-step continues from here
    trainer.m_step(x[index], z)
    after = list(vae.model_parameters())
    assert all(not torch.equal(p, s) for p, s in zip(after, model_before, strict=True))
    assert bitwise_equal(vae.guide_parameters(), guide_before)  # MCEM trains no encoder


def test_m_step_objective_is_the_mean_complete_data_log_likelihood():
    vae, x, _ = linear_gaussian(exact_posterior=True)
    z = torch.randn(4, 40, 2)
    expected = sum(
        (vae.prior().log_prob(z[s]) + vae.likelihood(vae.decoder(z[s])).log_prob(x)).sum()
        for s in range(4)
    )
    assert torch.allclose(complete_data_log_likelihood(vae, x, z), expected / 4)


def test_mcem_raises_the_exact_marginal_likelihood():
    x = linear_gaussian_data()
    vae = linear_gaussian_vae(x.shape[1])
    trainer = MCEMTrainer(vae, num_data=len(x), chain=ChainSettings(warmup=10, samples=5), lr=0.05)
    g = torch.Generator().manual_seed(0)
    history = [exact_log_px(vae, x)]
    for _ in range(2):
        trainer.train_epoch(x, 100, g)
        history.append(exact_log_px(vae, x))
    assert history[1] > history[0] and history[2] > history[1] + 0.1


# --- command line -----------------------------------------------------------------------------


def tiny_mcem_argv(data_dir, out, epochs):
    argv = ["train", "--algo", "mcem", "--data-dir", str(data_dir), "--epochs", str(epochs)]
    argv += ["--z-dim", "2", "--hidden-dims", "16", "--limit-train", "60", "--limit-test", "20"]
    argv += ["--batch-size", "20", "--mc-warmup", "3", "--mc-samples", "2"]
    argv += ["--mc-eval-warmup", "3", "--mc-eval-samples", "3", "--eval-every", "1"]
    return [*argv, "--eval-iw-samples", "5", "--out", str(out), "--quiet"]


def test_mcem_run_writes_metrics_and_resumes_exactly(fake_data_dir, tmp_path):
    assert main(tiny_mcem_argv(fake_data_dir, tmp_path / "whole", 2)) == 0
    assert main(tiny_mcem_argv(fake_data_dir, tmp_path / "split", 1)) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    for name, value in whole["vae"].items():
        assert torch.equal(value, split["vae"][name]), name
    assert torch.equal(whole["trainer"]["chain_state"], split["trainer"]["chain_state"])
    with (tmp_path / "whole" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["decoder_updates"]) for r in rows] == [3, 6]
    assert {int(r["encoder_updates"]) for r in rows} == {0}
    for row in rows:
        for column in ("test_elbo", "test_iwae", "train_iwae"):
            assert math.isfinite(float(row[column]))
        assert float(row["test_iwae"]) >= float(row["test_elbo"]) - 1.0
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["algo"] == "mcem"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prior", "vamp:5"], "trains no encoder"),
        (["--mc-eval-samples", "1"], "at least 2"),
        (["--mc-kernel", "gibbs"], "invalid choice"),
        (["--mc-target-accept", "1.5"], "in (0, 1)"),
    ],
)
def test_bad_mcem_flags_exit_2_with_one_line(flags, message, fake_data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--algo", "mcem", "--data-dir", str(fake_data_dir), "--out", str(out)]
    try:
        code = main([*argv, *flags])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_config_accepts_mcem_defaults():
    TrainConfig(algo="mcem").validate()
    with pytest.raises(UserError):
        TrainConfig(algo="mcem", mc_warmup=-1).validate()


def test_compare_runs_svi_em_and_mcem_end_to_end(fake_data_dir, tmp_path):
    out = tmp_path / "kw"
    argv = ["compare", "--algos", "svi,em,mcem", "--data-dir", str(fake_data_dir)]
    argv += ["--epochs", "2", "--z-dim", "2", "--hidden-dims", "16", "--limit-train", "60"]
    argv += ["--limit-test", "20", "--batch-size", "20", "--e-max", "4", "--e-check", "2"]
    argv += ["--mc-warmup", "3", "--mc-samples", "2", "--mc-eval-warmup", "3"]
    argv += ["--mc-eval-samples", "3", "--eval-every", "1", "--eval-iw-samples", "5"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    with (out / "comparison.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"svi", "em-converge", "mcem"}
    assert {int(r["decoder_updates"]) for r in rows.values()} == {6}
    assert int(rows["mcem"]["encoder_updates"]) == 0
    for row in rows.values():
        for column in ("train_iwae", "test_iwae", "test_iwae_50"):
            assert math.isfinite(float(row[column]))
    assert (out / "comparison.png").stat().st_size > 0


@pytest.mark.slow
def test_compare_methods_example_runs(fake_data_dir, tmp_path):
    path = Path(__file__).parents[1] / "examples" / "compare_methods.py"
    spec = importlib.util.spec_from_file_location("compare_methods", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--data-dir", str(fake_data_dir), "--epochs", "1", "--limit-train", "40"]
    argv += ["--limit-test", "10", "--eval-limit", "10", "--eval-iw-samples", "4", "--e-max", "4"]
    argv += ["--mc-eval-warmup", "2", "--mc-eval-samples", "2", "--out", str(tmp_path / "o")]
    assert module.main([*argv, "--quiet"]) == 0
    config = json.loads((tmp_path / "o" / "mcem" / "config.json").read_text())
    assert (config["z_dim"], config["hidden_dims"], config["limit_train"]) == (3, [100], 40)
