"""Held-out estimators against closed forms on a linear-Gaussian VAE, and the evaluate/plot
commands.

Model: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_D). Then log p(x) = log N(x; b, W W^T + s^2 I)
exactly, and the posterior p(z|x) = N(A (x - b), S) with S = (I + W^T W / s^2)^-1 and
A = S W^T / s^2 is a diagonal Gaussian whenever W^T W is diagonal (orthogonal columns), so the
exact posterior lies inside the guide family.
"""

import json
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import (
    VAE,
    GaussianLikelihood,
    StandardNormalPrior,
    UserError,
    active_units,
    elbo_terms,
    log_likelihood,
    mutual_information,
)
from pyro_vae.cli.main import main

D, Z, S = 6, 2, 0.5


class AffineEncoder(nn.Module):
    """q(z|x) = N(A (x - b) + c, diag scale^2) with A, c, scale given (not trained)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b, self.log_scale = nn.Parameter(a), nn.Parameter(b), nn.Parameter(scale.log())

    def forward(self, x):
        loc = (x - self.b) @ self.a.T
        return loc, self.log_scale.exp().expand_as(loc)


def linear_gaussian(exact_posterior: bool) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.zeros(D, Z)
    w[:3, 0], w[3:, 1] = torch.tensor([1.0, -0.5, 0.8]), torch.tensor([0.6, 0.9, -0.7])
    b = torch.linspace(-0.5, 0.5, D)
    decoder = nn.Linear(Z, D)
    decoder.weight.data, decoder.bias.data = w.clone(), b.clone()
    cov_post = torch.linalg.inv(torch.eye(Z) + w.T @ w / S**2)  # diagonal: orthogonal columns
    gain = cov_post @ w.T / S**2
    if exact_posterior:
        encoder = AffineEncoder(gain, b, cov_post.diagonal().sqrt())
    else:  # a deliberately poor guide: half the gain, twice the spread
        encoder = AffineEncoder(0.5 * gain, b, 2 * cov_post.diagonal().sqrt())
    vae = VAE(
        encoder, decoder, StandardNormalPrior(Z), GaussianLikelihood(D, "fixed:0.5"), data_dim=D
    )
    x = dist.MultivariateNormal(b, w @ w.T + S**2 * torch.eye(D)).sample((40,))
    exact = dist.MultivariateNormal(b, w @ w.T + S**2 * torch.eye(D)).log_prob(x)
    return vae, x, exact


def test_exact_posterior_makes_every_estimator_exact():
    vae, x, exact = linear_gaussian(exact_posterior=True)
    elbo = elbo_terms(vae, x, num_samples=1)["elbo"]
    iwae = log_likelihood(vae, x, num_samples=7, batch_size=9, sample_chunk=3)
    assert torch.allclose(elbo, exact, atol=1e-4)  # the weights p(x, z)/q(z|x) are constant
    assert torch.allclose(iwae, exact, atol=1e-4)


def test_bounds_are_ordered_and_iwae_approaches_the_exact_value():
    vae, x, exact = linear_gaussian(exact_posterior=False)
    elbo = elbo_terms(vae, x, num_samples=2000)["elbo"].mean().item()
    iw = {k: log_likelihood(vae, x, num_samples=k).mean().item() for k in (10, 100, 3000)}
    l1 = log_likelihood(vae, x.repeat(100, 1), num_samples=1).mean().item()
    truth = exact.mean().item()
    assert elbo < truth - 0.5  # a real gap for this guide
    assert l1 == pytest.approx(elbo, abs=0.15)  # L_1 is the ELBO
    assert elbo < iw[10] < iw[100] < iw[3000] <= truth + 0.05
    assert truth - iw[3000] < 0.1 * (truth - elbo)  # most of the gap closed


def test_chunking_over_samples_and_data_gives_the_same_estimate():
    vae, x, _ = linear_gaussian(exact_posterior=False)
    torch.manual_seed(1)
    whole = log_likelihood(vae, x, num_samples=400, batch_size=40, sample_chunk=400)
    torch.manual_seed(2)
    chunked = log_likelihood(vae, x, num_samples=400, batch_size=7, sample_chunk=33)
    assert whole.shape == chunked.shape == (40,)
    diff = whole - chunked  # the same estimator with independent noise: zero mean
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(40)
    assert diff.abs().max() < 1.0


def test_estimators_reject_non_positive_counts():
    vae, x, _ = linear_gaussian(exact_posterior=True)
    for kwargs in ({"num_samples": 0}, {"batch_size": -1}, {"sample_chunk": 0}):
        with pytest.raises(UserError, match="must be a positive integer"):
            log_likelihood(vae, x, **kwargs)


class ConstantEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([0.3, -1.0]))

    def forward(self, x):
        return self.loc.expand(x.shape[0], Z), torch.ones(x.shape[0], Z)


class CopyEncoder(nn.Module):
    """Posterior mean = the first two coordinates of x, tiny spread."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, :Z] + self.dummy, torch.full((x.shape[0], Z), 1e-3)


def test_active_units_and_mutual_information_on_known_cases():
    x = torch.randn(500, D)
    decoder = nn.Linear(Z, D)
    lik = GaussianLikelihood(D, "fixed:1.0")
    ignoring = VAE(ConstantEncoder(), decoder, StandardNormalPrior(Z), lik)
    assert active_units(ignoring, x) == 0
    assert abs(mutual_information(ignoring, x)) < 0.05
    copying = VAE(CopyEncoder(), decoder, StandardNormalPrior(Z), lik)
    assert active_units(copying, x) == Z
    # Codes identify data points almost exactly: I approaches its ceiling log N.
    assert mutual_information(copying, x, batch_size=500) > math.log(500) - 0.1


@pytest.fixture
def trained_run(fake_data_dir, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data-dir",
            str(fake_data_dir),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--z-dim",
            "2",
            "--hidden-dims",
            "16",
            "--quiet",
            "--eval-every",
            "1",
            "--eval-iw-samples",
            "20",
            "--eval-limit",
            "50",
        ]
    )
    assert code == 0
    return out


def test_training_records_heldout_metrics_and_all_figures(trained_run):
    import csv

    with (trained_run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert float(row["test_iwae"]) >= float(row["test_elbo"]) - 1.0
        assert 0 <= int(float(row["active_units"])) <= 2
    names = {p.name for p in (trained_run / "figures").iterdir()}
    assert {
        "reconstructions.png",
        "samples.png",
        "curves.png",
        "manifold.png",
        "latent.png",
        "interpolation.png",
    } <= names


def test_evaluate_command_writes_eval_json(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--iw-samples", "50", "--limit", "40"]) == 0
    out = capsys.readouterr().out
    assert "log p(x)" in out and "active units" in out
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["num_test"] == 40 and result["iw_samples"] == 50
    assert result["iwae"] >= result["elbo"] - 1.0  # up to Monte Carlo error
    assert {"kl", "recon", "mutual_info", "active_units", "versions"} <= set(result)


def test_plot_command_regenerates_figures(trained_run, capsys):
    (trained_run / "figures" / "manifold.png").unlink()
    assert main(["plot", str(trained_run)]) == 0
    assert (trained_run / "figures" / "manifold.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "RUN", "--iw-samples", "0"], "'0' is not a positive integer"),
        (["evaluate", "RUN", "--limit", "-2"], "'-2' is not a positive integer"),
        (["evaluate", "EMPTY"], "no checkpoint"),
        (["evaluate", "MISSING"], "does not exist"),
        (["plot", "EMPTY"], "no checkpoint"),
    ],
)
def test_evaluate_bad_input(trained_run, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    paths = {
        "RUN": str(trained_run),
        "EMPTY": str(tmp_path / "empty"),
        "MISSING": str(tmp_path / "missing"),
    }
    try:
        code = main([paths.get(a, a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_evaluate_refuses_a_checkpoint_of_another_configuration(trained_run, capsys):
    config = json.loads((trained_run / "config.json").read_text())
    from pyro_vae.runs.folder import Run

    state = Run(trained_run).load_checkpoint()
    state["config"] = {**config, "z_dim": 5}
    torch.save(state, trained_run / "checkpoint.pt")
    assert main(["evaluate", str(trained_run), "--iw-samples", "5"]) == 2
    assert "does not match" in capsys.readouterr().err


@pytest.mark.parametrize("epochs, long", [(20, False), (400, True)])
def test_curves_of_a_long_run_use_a_log_epoch_axis_and_ignore_its_first_epochs(
    monkeypatch, tmp_path, epochs, long
):
    from pyro_vae.evaluation import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    metrics = [
        {
            "epoch": e,
            "train_loss": 90 + 200 / e,
            "test_elbo": -91 - 200 / e,
            "test_recon": math.nan,
            "val_elbo": math.nan,
            "test_iwae": -87 - 100 / e if e % (epochs // 4) == 0 else math.nan,
        }
        for e in range(1, epochs + 1)
    ]
    figures.plot_curves(metrics, tmp_path / "curves.png")
    (ax,) = drawn[0].axes
    assert ax.get_xscale() == ("log" if long else "linear")
    bottom, top = ax.get_ylim()
    assert (bottom > -291) == long  # the first epoch's -291 sets the range of a short run only
    assert top > -87 - 100 / epochs  # the IWAE points stay inside
    assert [len(line.get_xdata()) for line in ax.lines] == [epochs, epochs, 4]
