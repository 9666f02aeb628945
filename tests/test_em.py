"""Variational EM: frozen groups stay bitwise frozen, E-steps close the gap to log p(x) on a model
with a closed-form marginal, the stopping rules stop where they should, and the comparison runs
end to end."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import (
    VAE,
    EMTrainer,
    GaussianLikelihood,
    StandardNormalPrior,
    TrainConfig,
    UserError,
    build_vae,
    make_objective,
    mutual_information,
)
from pyro_vae.cli.main import main
from pyro_vae.infer.em import random_minibatch, run_inner_loop

# --- helpers ----------------------------------------------------------------------------------


def small_trainer(rule: str, **kwargs) -> tuple[EMTrainer, torch.Tensor]:
    """A tiny VAE with a learnable likelihood scale (so theta spans decoder and likelihood)."""
    vae = build_vae(12, z_dim=2, hidden_dims=(8,), likelihood="gaussian")
    x = torch.rand(40, 12)
    trainer = EMTrainer(
        vae,
        make_objective("trace"),
        e_rule=rule,
        e_steps=3,
        e_check=2,
        e_max=6,
        e_lr=0.01,
        m_lr=0.01,
        mutual_info=lambda: mutual_information(vae, x[:10]),
        **kwargs,
    )
    return trainer, x


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def bitwise_equal(params, saved) -> bool:
    return all(torch.equal(p, s) for p, s in zip(params, saved, strict=True))


class LinearEncoder(nn.Module):
    """q(z|x) = N(a^T x + c, softplus(d^T x + e)^2): contains the exact posterior of the
    one-dimensional linear-Gaussian model (mean linear in x, variance constant)."""

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(data_dim, 1)
        self.raw_scale = nn.Linear(data_dim, 1)

    def forward(self, x):
        return self.loc(x), F.softplus(self.raw_scale(x))


def linear_gaussian_vae(data_dim: int) -> VAE:
    """Factor analysis: z ~ N(0, 1), x = W z + b + N(0, diag sigma^2), sigma learned."""
    return VAE(
        LinearEncoder(data_dim),
        nn.Linear(1, data_dim),
        StandardNormalPrior(1),
        GaussianLikelihood(data_dim, init_scale=1.0),
    )


def likelihood_variance(vae: VAE) -> torch.Tensor:
    """sigma^2 per pixel of the Gaussian likelihood (the same for every decoder output)."""
    return vae.likelihood(vae.decoder.bias).base_dist.scale ** 2


@torch.no_grad()
def exact_log_px(vae: VAE, x: torch.Tensor) -> float:
    """Mean log N(x; b, W W^T + diag sigma^2): the exact marginal likelihood."""
    w, b, var = vae.decoder.weight, vae.decoder.bias, likelihood_variance(vae)
    return dist.MultivariateNormal(b, w @ w.T + torch.diag(var)).log_prob(x).mean().item()


@torch.no_grad()
def exact_elbo(vae: VAE, x: torch.Tensor) -> float:
    """Mean ELBO in closed form for q = N(m, v):
    sum_d [log N(x_d; w_d m + b_d, s_d^2) - w_d^2 v / (2 s_d^2)] - KL(N(m, v) || N(0, 1))."""
    w, b, var = vae.decoder.weight[:, 0], vae.decoder.bias, likelihood_variance(vae)
    m, sd = vae.encoder(x)
    v = sd**2
    recon = (
        dist.Normal(m * w + b, var.sqrt()).log_prob(x).sum(-1) - (w**2 / (2 * var)).sum() * v[:, 0]
    )
    kl = 0.5 * (v + m**2 - 1 - v.log())[:, 0]
    return (recon - kl).mean().item()


def linear_gaussian_data(n: int = 500, data_dim: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(data_dim, 1, generator=g)
    z = torch.randn(n, 1, generator=g)
    return z @ w.T + 0.5 + 0.3 * torch.randn(n, data_dim, generator=g)


# --- freezing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["fixed", "converge", "aggressive"])
def test_e_step_freezes_model_and_m_step_freezes_guide(rule):
    trainer, x = small_trainer(rule)
    guide, model = trainer.guide_params, trainer.model_params
    assert any(p is trainer.vae.likelihood.raw_scale for p in model)  # likelihood is theta

    before_guide, before_model = snapshot(guide), snapshot(model)
    taken = trainer.e_step(x[:8], random_minibatch(x, 8, torch.Generator().manual_seed(0)))
    assert taken > 0 and trainer.encoder_updates == taken and trainer.decoder_updates == 0
    assert bitwise_equal(model, before_model)
    assert all(p.grad is None for p in model)
    assert not bitwise_equal(guide, before_guide)

    before_guide, before_model = snapshot(guide), snapshot(model)
    trainer.m_step(x[:8])
    assert trainer.decoder_updates == 1
    assert bitwise_equal(guide, before_guide)
    assert all(p.grad is None for p in guide)
    assert not bitwise_equal(model, before_model)


def test_aggressive_switches_to_joint_steps_after_patience():
    trainer, x = small_trainer("aggressive", patience=2)
    trainer.update_aggressive(1.0)
    trainer.update_aggressive(0.9)  # one epoch without a new best: keep doing EM
    assert trainer.em_active
    trainer.update_aggressive(1.0)  # ties the best: still no gain
    assert not trainer.em_active
    guide, model = trainer.guide_params, trainer.model_params
    before_guide, before_model = snapshot(guide), snapshot(model)
    trainer.step(x[:8])  # joint SVI: both groups move, one update each
    assert not bitwise_equal(guide, before_guide) and not bitwise_equal(model, before_model)
    assert (trainer.encoder_updates, trainer.decoder_updates, trainer.inner_steps) == (1, 1, 0)


def test_aggressive_epoch_measures_validation_mi():
    trainer, x = small_trainer("aggressive")
    trainer.train_epoch(x, 8, torch.Generator().manual_seed(0))
    record = trainer.epoch_record()
    assert record["val_mi"] == trainer.best_mi  # the first measurement is the best so far
    assert abs(record["val_mi"]) < math.log(10)  # He et al.'s estimate is about in [0, log N]
    assert record["decoder_updates"] == 5
    assert record["encoder_updates"] == record["inner_steps"] > 5


def test_state_dict_round_trip():
    trainer, x = small_trainer("converge")
    trainer.step(x[:8], random_minibatch(x, 8))
    other, _ = small_trainer("converge")
    other.load_state_dict(trainer.state_dict())
    assert (other.step_count, other.encoder_updates, other.decoder_updates) == (
        trainer.step_count,
        trainer.encoder_updates,
        trainer.decoder_updates,
    )
    assert (
        other.e_optimizer.state_dict()["state"].keys()
        == trainer.e_optimizer.state_dict()["state"].keys()
    )


# --- stopping rules ---------------------------------------------------------------------------


def scripted(losses):
    calls = iter(losses)
    return lambda: next(calls)


def test_fixed_rule_takes_exactly_k_steps():
    assert run_inner_loop(scripted([1.0] * 7), "fixed", e_steps=7) == 7
    trainer, x = small_trainer("fixed")
    for _ in range(3):
        trainer.step(x[:8], random_minibatch(x, 8))
    assert (trainer.encoder_updates, trainer.decoder_updates) == (9, 3)


def test_converge_rule_stops_after_first_window_without_decrease():
    # windows of 10: means 95.5, 85.5, then a window averaging higher -> stop at step 30
    losses = [100.0 - i for i in range(20)] + [90.0] * 20
    assert run_inner_loop(scripted(losses), "converge", e_check=10, e_max=100) == 30
    # a flat loss: the second window is no lower than the first
    assert run_inner_loop(scripted([5.0] * 100), "converge", e_check=10, e_max=100) == 20


def test_converge_rule_respects_the_cap():
    losses = [-float(i) for i in range(1000)]  # always decreasing
    assert run_inner_loop(scripted(losses), "converge", e_check=10, e_max=55) == 55
    trainer, x = small_trainer("converge")  # e_check 2, e_max 6
    for _ in range(4):
        taken = trainer.e_step(x[:8], random_minibatch(x, 8))
        assert 4 <= taken <= 6


# --- linear-Gaussian model: exact log p(x) ----------------------------------------------------


def test_converge_e_step_closes_the_gap_to_exact_log_likelihood():
    x = linear_gaussian_data()
    vae = linear_gaussian_vae(x.shape[1])
    trainer = EMTrainer(
        vae, make_objective("meanfield"), e_rule="converge", e_check=50, e_max=2000, e_lr=0.05
    )
    log_px = exact_log_px(vae, x)
    gap_before = log_px - exact_elbo(vae, x)
    assert gap_before > 0.3
    trainer.e_step(x[:100], random_minibatch(x, 100, torch.Generator().manual_seed(0)))
    assert exact_log_px(vae, x) == log_px  # the E-step does not move theta
    gap_after = log_px - exact_elbo(vae, x)
    assert -1e-4 < gap_after < 0.02  # KL(q || exact posterior), from 0.37 nats to 0.002


def test_em_raises_exact_marginal_log_likelihood():
    x = linear_gaussian_data()
    vae = linear_gaussian_vae(x.shape[1])
    trainer = EMTrainer(
        vae,
        make_objective("meanfield"),
        e_rule="converge",
        e_check=20,
        e_max=100,
        e_lr=0.05,
        m_lr=0.05,
    )
    g = torch.Generator().manual_seed(0)
    history = [exact_log_px(vae, x)]
    for _ in range(2):
        trainer.train_epoch(x, 100, g)
        history.append(exact_log_px(vae, x))
    assert history[1] > history[0] and history[2] > history[1] + 0.1
    assert history[2] - exact_elbo(vae, x) < 0.1  # q stays near the exact posterior
    mle = dist.MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0)).log_prob(x).mean()
    assert history[2] < mle.item()  # no model in the family beats the Gaussian MLE


# --- mutual information -----------------------------------------------------------------------


class ShiftEncoder(nn.Module):
    """q(z|x) = N(slope * x, scale^2) on scalar x."""

    def __init__(self, slope: float, scale: float) -> None:
        super().__init__()
        self.slope, self.scale = slope, scale

    def forward(self, x):
        return self.slope * x, torch.full_like(x, self.scale)


@pytest.mark.parametrize("slope,expected", [(1.0, 0.5 * math.log(1 + 1 / 0.5**2)), (0.0, 0.0)])
def test_mutual_information_matches_gaussian_closed_form(slope, expected):
    # x ~ N(0, 1), z | x ~ N(slope x, 0.25): I(x; z) = 0.5 log(1 + slope^2 / 0.25)
    # (not seed 0: the global seed is 0 too, and z's noise would then equal x)
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(123))
    vae = VAE(ShiftEncoder(slope, 0.5), nn.Identity(), StandardNormalPrior(1), nn.Identity())
    assert mutual_information(vae, x, batch_size=2000) == pytest.approx(expected, abs=0.03)


# --- configuration and command line -----------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--algo", "newton"],
        ["--algo", "em", "--e-rule", "sometimes"],
        ["--algo", "em", "--e-steps", "0"],
        ["--algo", "em", "--e-max", "-3"],
        ["--algo", "em", "--e-check", "0"],
        ["--algo", "em", "--patience", "0"],
        ["--algo", "em", "--e-lr", "0"],
        ["--algo", "em", "--e-rule", "aggressive"],  # needs --val-size for its MI
    ],
)
def test_bad_em_flags_exit_2_with_one_line(flags, fake_data_dir, tmp_path, capsys):
    argv = ["train", "--data-dir", str(fake_data_dir), "--out", str(tmp_path / "r"), *flags]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "change", [{"algo": "gibbs"}, {"e_rule": "x"}, {"e_max": 0}, {"patience": -1}, {"m_lr": 0.0}]
)
def test_config_rejects_bad_em_settings(change):
    with pytest.raises(UserError):
        TrainConfig(**{"algo": "em", **change}).validate()


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_writes_both_runs_figure_and_table(fake_data_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--data-dir", str(fake_data_dir), "--epochs", "2", "--z-dim", "2"]
    argv += ["--hidden-dims", "16", "--limit-test", "50", "--e-rule", "converge", "fixed"]
    argv += ["--e-max", "8", "--e-check", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    for name in ("svi", "em-converge", "em-fixed"):
        assert (out / name / "metrics.csv").is_file() and (out / name / "checkpoint.pt").is_file()
    assert (out / "comparison.png").stat().st_size > 0
    assert (out / "comparison.md").read_text().count("\n") == 5  # header, rule, three rows
    with (out / "comparison.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    steps = 2 * math.ceil(600 / 128)
    assert {int(r["decoder_updates"]) for r in rows.values()} == {steps}
    assert int(rows["svi"]["encoder_updates"]) == steps
    assert int(rows["em-fixed"]["encoder_updates"]) == 5 * steps  # default --e-steps 5
    assert steps * 4 <= int(rows["em-converge"]["encoder_updates"]) <= steps * 8
    for row in rows.values():
        assert float(row["test_iwae_50"]) >= float(row["test_elbo"]) - 1.0
        assert math.isfinite(float(row["mutual_info"]))
    assert "| em-converge |" in capsys.readouterr().out


@pytest.mark.slow
def test_train_em_example_runs(fake_data_dir, tmp_path):
    path = Path(__file__).parents[1] / "examples" / "train_em.py"
    spec = importlib.util.spec_from_file_location("train_em", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "em"
    argv = ["--data-dir", str(fake_data_dir), "--epochs", "1", "--z-dim", "2"]
    argv += ["--hidden-dims", "16", "--e-rule", "fixed", "--e-steps", "2", "--out", str(out)]
    assert module.main([*argv, "--quiet"]) == 0
    with (out / "metrics.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (int(row["encoder_updates"]), int(row["decoder_updates"])) == (10, 5)
    assert int(row["inner_steps"]) == 10
    assert json.loads((out / "config.json").read_text())["algo"] == "em"
