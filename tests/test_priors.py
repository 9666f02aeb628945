"""Priors: normalised densities, sample shapes, which side their parameters are on, gradients."""

import math
import re

import pytest
import torch
from torch import nn

from pyro_vae import VAE, SVITrainer, make_objective
from pyro_vae.cli.main import main
from pyro_vae.errors import UserError
from pyro_vae.infer.traces import log_densities
from pyro_vae.models.likelihoods import BernoulliLikelihood
from pyro_vae.models.networks import MLPDecoder, MLPEncoder
from pyro_vae.models.priors import (
    FlowPrior,
    MixtureOfGaussiansPrior,
    StandardNormal,
    StandardNormalPrior,
    VampPrior,
    check_prior_spec,
    has_closed_form_kl,
    make_prior,
)

D, Z = 12, 2
SPECS = ["normal", "mog:3", "vamp:4", "flow:2"]


def make_vae(spec: str, z_dim: int = Z) -> VAE:
    encoder = MLPEncoder(D, (16,), z_dim)
    prior = make_prior(spec, z_dim, encoder, D)
    return VAE(encoder, MLPDecoder(z_dim, (16,), D), prior, BernoulliLikelihood(), data_dim=D)


def randomize(prior: nn.Module) -> None:
    """Move learnable parameters away from their symmetric initial values."""
    with torch.no_grad():
        if isinstance(prior, MixtureOfGaussiansPrior):
            prior.logits.normal_()
            prior.locs.mul_(1.5)
            prior.raw_scales.add_(0.4 * torch.randn_like(prior.raw_scales))
        if isinstance(prior, VampPrior):
            prior.pseudo_inputs.uniform_(0, 1)


def binary_batch(n: int = 8) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.3))


@pytest.mark.parametrize("spec", SPECS)
def test_log_prob_integrates_to_one_in_2d(spec):
    vae = make_vae(spec)
    randomize(vae.prior)
    grid = torch.linspace(-12, 12, 481)
    step = (grid[1] - grid[0]).item()
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = vae.prior().log_prob(z).exp()
    assert density.shape == (z.shape[0],)
    assert density.sum().item() * step**2 == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("spec", SPECS)
def test_samples_and_log_prob_shapes(spec):
    vae = make_vae(spec, z_dim=3)
    p = vae.prior()
    assert tuple(p.batch_shape) == () and tuple(p.event_shape) == (3,)
    with torch.no_grad():
        assert p.sample((7,)).shape == (7, 3)
        assert p.log_prob(torch.randn(4, 5, 3)).shape == (4, 5)
        assert vae.sample(6).shape == (6, D)
        terms = log_densities(vae.model, vae.guide, binary_batch(5), num_samples=4)
    assert terms.log_pz.shape == (4, 5) and torch.isfinite(terms.log_pz).all()


def test_mixture_matches_hand_computed_density():
    prior = MixtureOfGaussiansPrior(2, 3)
    randomize(prior)
    z = torch.randn(10, 2)
    w = torch.softmax(prior.logits, 0)
    scales = torch.nn.functional.softplus(prior.raw_scales) + 1e-4
    comp = torch.distributions.Normal(prior.locs, scales).log_prob(z[:, None, :]).sum(-1)
    expected = torch.logsumexp(comp + w.log(), dim=-1)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_vamp_prior_is_the_mean_of_the_encoder_posteriors():
    encoder = MLPEncoder(D, (16,), Z)
    prior = VampPrior(encoder, D, 5)
    randomize(prior)
    z = torch.randn(9, Z)
    loc, scale = encoder(prior.pseudo_inputs.clamp(0, 1))
    per_k = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
    expected = torch.logsumexp(per_k, -1) - math.log(5)
    torch.testing.assert_close(prior().log_prob(z), expected)


@pytest.mark.parametrize("spec", SPECS)
def test_parameter_sides_are_disjoint_and_complete(spec):
    vae = make_vae(spec)
    guide = {id(p) for p in vae.guide_parameters()}
    model = {id(p) for p in vae.model_parameters()}
    assert not guide & model
    assert guide | model == {id(p) for p in vae.parameters()}
    assert {id(p) for p in vae.prior.parameters()} <= model
    assert {id(p) for p in vae.encoder.parameters()} == guide


def test_sharing_the_encoder_as_a_submodule_is_refused():
    class BadVamp(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder  # registered: its parameters would be on both sides

        def forward(self):
            return StandardNormalPrior(Z)()

    encoder = MLPEncoder(D, (16,), Z)
    with pytest.raises(UserError, match="both the guide and the model side"):
        VAE(encoder, MLPDecoder(Z, (16,), D), BadVamp(encoder), BernoulliLikelihood(), data_dim=D)


@pytest.mark.parametrize("elbo", ["trace", "iwae", "meanfield"])
@pytest.mark.parametrize("spec", SPECS)
def test_prior_parameters_receive_gradients_in_svi(spec, elbo):
    vae = make_vae(spec)
    trainer = SVITrainer(vae, make_objective(elbo, num_particles=3), lr=1e-2)
    before = [p.detach().clone() for p in vae.prior.parameters()]
    loss = trainer.step(binary_batch())
    assert torch.isfinite(loss)
    for p, old in zip(vae.prior.parameters(), before, strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert not torch.equal(p, old)


def group_step(vae: VAE, params, x: torch.Tensor) -> None:
    """One Adam step of the ELBO on one parameter group only (EM's E- or M-step)."""
    optimizer = torch.optim.Adam(list(params), lr=1e-2)
    loss = make_objective("trace")(vae.model, vae.guide, x)
    optimizer.zero_grad()
    (loss / x.shape[0]).backward()
    optimizer.step()


@pytest.mark.parametrize("spec", ["mog:3", "vamp:4", "flow:2"])
def test_e_step_freezes_prior_and_m_step_freezes_encoder(spec):
    vae = make_vae(spec)
    x = binary_batch()
    prior0 = [p.detach().clone() for p in vae.prior.parameters()]
    enc0 = [p.detach().clone() for p in vae.encoder.parameters()]
    group_step(vae, vae.guide_parameters(), x)  # E-step
    assert all(torch.equal(p, q) for p, q in zip(vae.prior.parameters(), prior0, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(vae.encoder.parameters(), enc0, strict=True))
    enc1 = [p.detach().clone() for p in vae.encoder.parameters()]
    group_step(vae, vae.model_parameters(), x)  # M-step
    assert all(torch.equal(p, q) for p, q in zip(vae.encoder.parameters(), enc1, strict=True))
    assert all(not torch.equal(p, q) for p, q in zip(vae.prior.parameters(), prior0, strict=True))


@pytest.mark.parametrize("encoder_gradients", [True, False])
def test_vamp_prior_gradient_to_the_encoder_is_a_choice(encoder_gradients):
    encoder = MLPEncoder(D, (16,), Z)
    prior = VampPrior(encoder, D, 4, encoder_gradients=encoder_gradients)
    randomize(prior)
    (-prior().log_prob(torch.randn(6, Z)).sum()).backward()
    assert prior.pseudo_inputs.grad.abs().sum() > 0
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert reached == encoder_gradients


def test_only_the_standard_normal_has_a_closed_form_kl():
    closed = {spec: has_closed_form_kl(make_vae(spec).prior, Z) for spec in SPECS}
    assert closed == {"normal": True, "mog:3": False, "vamp:4": False, "flow:2": False}


@pytest.mark.parametrize("batch_shape", [(), (7,), (5, 7)])
def test_standard_normal_is_pyros_normal_to_the_last_bit(batch_shape):
    """The cheaper log-density changes no number: log_prob, its gradient, the closed-form KL,
    and its shape under the plates' expand (particles x data) are those of Normal(0, 1)."""
    import pyro.distributions as dist

    ours = StandardNormalPrior(Z)().expand(batch_shape)
    pyro_s = dist.Normal(torch.zeros(Z), torch.ones(Z)).to_event(1).expand(batch_shape)
    assert isinstance(ours.base_dist, StandardNormal)
    for z_shape in [(5, 7, Z), (7, Z), (Z,)]:
        z = (3 * torch.randn(z_shape)).requires_grad_()
        a, b = ours.log_prob(z), pyro_s.log_prob(z)
        assert a.shape == b.shape and torch.equal(a, b)
        (ga,) = torch.autograd.grad(a.sum(), z)
        (gb,) = torch.autograd.grad(b.sum(), z)
        if z.shape[:-1] == a.shape:  # as in the model: z has the batch shape
            assert torch.equal(ga, gb)
        else:  # z broadcast over the batch: its gradient sums copies in another order
            assert torch.allclose(ga, gb, rtol=1e-6)
    q = dist.Normal(torch.randn(7, Z), torch.rand(7, Z) + 0.1).to_event(1)
    kl = torch.distributions.kl_divergence(q, StandardNormalPrior(Z)().expand((7,)))
    closed = 0.5 * (q.mean**2 + q.variance - 1 - q.variance.log()).sum(-1)
    assert torch.allclose(kl, closed, atol=1e-6)


def test_prior_specs_name_every_constructor_argument():
    for good in ("normal", "mog:10", "flow:2", "vamp(num_components=3, encoder_gradients=False)"):
        check_prior_spec(good)
    spec = "vamp(num_components=3, encoder_gradients=False)"
    vamp = make_prior(spec, Z, MLPEncoder(D, (4,), Z), D)
    assert vamp.pseudo_inputs.shape == (3, D) and not vamp.encoder_gradients
    assert make_prior("flow(num_layers=1, hidden_dims=(5,))", Z, None, D).layers[0] is not None
    bad = {
        "mog": "missing a required argument: 'num_components'",
        "normal:3": "takes no argument",
        "gauss:3": "unknown prior 'gauss'",
        "mog:x y": "not a number",
        "mog(z_dim=3)": "comes from the run's settings",
        "mog(3)": "by keyword",
        "mog(k=open('x'))": "keyword=literal",
    }
    for spec, message in bad.items():
        with pytest.raises(UserError, match=re.escape(message)):
            check_prior_spec(spec)
    for spec in ("mog:0", "vamp:-1", "mog:2.5", "flow:0"):  # values: checked when built
        with pytest.raises(UserError, match="must be a positive integer"):
            make_prior(spec, Z, MLPEncoder(D, (4,), Z), D)


def test_bad_prior_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--prior", "mog:zero"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zero' after ':' is not a number" in err


def test_flow_prior_needs_two_dimensions():
    with pytest.raises(UserError, match="z-dim 2"):
        FlowPrior(1, 2)
