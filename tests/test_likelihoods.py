"""Likelihoods: log-densities against torch.distributions and closed forms; bad data rejected."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli

from pyro_vae import TrainConfig, fit
from pyro_vae.errors import UserError
from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    IndependentBernoulli,
    check_data,
    make_likelihood,
    parse_gaussian_scale,
)

D = 5


def test_bernoulli_matches_torch():
    logits, x = torch.randn(3, D), torch.bernoulli(torch.full((3, D), 0.5))
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(BernoulliLikelihood()(logits).log_prob(x), expected)


def test_independent_bernoulli_is_pyros_bernoulli_to_event():
    """The fused log-prob equals Bernoulli(logits).to_event(1) bitwise, also broadcast over
    particles and after expand; sampling, mean and support checks are Pyro's."""
    logits, x = torch.randn(4, 3, D), torch.bernoulli(torch.full((3, D), 0.5))
    fused, reference = IndependentBernoulli.from_logits(logits), Bernoulli(logits=logits)
    reference = reference.to_event(1)
    assert fused.batch_shape == (4, 3) and fused.event_shape == (D,)
    assert torch.equal(fused.log_prob(x), reference.log_prob(x))
    expanded = fused.expand((2, 4, 3))
    assert isinstance(expanded, IndependentBernoulli)
    assert torch.equal(expanded.log_prob(x), reference.expand((2, 4, 3)).log_prob(x))
    assert torch.equal(fused.mean, torch.sigmoid(logits))
    assert fused.sample((5,)).shape == (5, 4, 3, D)
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        fused.log_prob(torch.full((3, D), 0.5))


@pytest.mark.parametrize(
    "mode, num_params", [("fixed:0.1", 0), ("global", 1), ("pixel", D), ("decoder", 0)]
)
def test_gaussian_scale_modes_match_torch(mode, num_params):
    lik = GaussianLikelihood(D, mode)
    assert sum(p.numel() for p in lik.parameters()) == num_params
    with torch.no_grad():
        for p in lik.parameters():
            p.normal_()
    params = torch.randn(4, lik.params_per_dim * D)
    x = torch.rand(4, D)
    loc = params[:, :D]
    if mode == "fixed:0.1":
        scale = torch.full((D,), 0.1)
    elif mode == "decoder":
        scale = F.softplus(params[:, D:]) + 0.01
    else:
        scale = F.softplus(lik.raw_scale) + 0.01
    expected = torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(params).log_prob(x), expected)
    torch.testing.assert_close(lik.mean(params), loc.clamp(0, 1))


def test_continuous_bernoulli_closed_form_and_normalisation():
    lam, x = 0.8, 0.3
    log_c = math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = D * (log_c + x * math.log(lam) + (1 - x) * math.log(1 - lam))
    logits = torch.full((D,), math.log(lam / (1 - lam)))
    lik = ContinuousBernoulliLikelihood()
    assert lik(logits).log_prob(torch.full((D,), x)).item() == pytest.approx(expected, rel=1e-5)
    ref = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(torch.full((D,), x))
    assert lik(logits).log_prob(torch.full((D,), x)).item() == pytest.approx(ref.sum().item())
    # A density on [0, 1]: each pixel's marginal integrates to one (midpoint rule).
    grid = (torch.arange(2000) + 0.5) / 2000
    one_pixel = torch.distributions.ContinuousBernoulli(logits=torch.tensor([-2.0, 0.3, 3.0]))
    mass = one_pixel.log_prob(grid[:, None]).exp().mean(0)
    torch.testing.assert_close(mass, torch.ones(3), atol=1e-4, rtol=0)
    # Its mean is not sigmoid(logits); figures use the true mean.
    assert not torch.allclose(lik.mean(logits), torch.sigmoid(logits))


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("bernoulli", torch.tensor([[0.0, 0.5, 1.0]]), "binary"),
        ("continuous-bernoulli", torch.tensor([[0.0, 1.5, 1.0]]), r"\[0, 1\]"),
        ("continuous-bernoulli", torch.tensor([[-0.1, 0.5, 1.0]]), r"\[0, 1\]"),
        ("gaussian", torch.tensor([[0.0, float("nan"), 1.0]]), "finite"),
    ],
)
def test_data_outside_the_support_is_rejected(name, bad, message):
    lik = make_likelihood(name, 3)
    with pytest.raises(UserError, match=message):
        check_data(lik, bad)
    check_data(lik, torch.tensor([[0.0, 1.0, 1.0]]))  # inside every support


def test_parse_gaussian_scale():
    assert parse_gaussian_scale("fixed:0.1") == ("fixed", 0.1)
    assert parse_gaussian_scale("decoder") == ("decoder", 0.0)
    for bad in ("fixed", "fixed:0", "fixed:-1", "fixed:abc", "fixed:nan", "perpixel"):
        with pytest.raises(UserError, match="bad gaussian scale"):
            parse_gaussian_scale(bad)


def test_bernoulli_on_grey_levels_is_refused_before_training(fake_data_dir, tmp_path):
    config = TrainConfig(data_dir=str(fake_data_dir), binarize="none", out=str(tmp_path / "r"))
    with pytest.raises(UserError, match="binary"):
        fit(config)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "likelihood, scale", [("continuous-bernoulli", "pixel"), ("gaussian", "decoder")]
)
def test_grey_level_likelihoods_train(fake_data_dir, tmp_path, likelihood, scale):
    config = TrainConfig(
        data_dir=str(fake_data_dir),
        binarize="none",
        likelihood=likelihood,
        gaussian_scale=scale,
        z_dim=4,
        hidden_dims=(64,),
        epochs=4,
        batch_size=32,
        lr=3e-3,
        out=str(tmp_path / "run"),
        quiet=True,
    )
    rows = fit(config).read_metrics()
    assert rows[-1]["test_elbo"] > rows[0]["test_elbo"]
