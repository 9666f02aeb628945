"""The training objectives against closed forms and against Pyro's own estimators."""

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_vae import build_vae, elbo_terms, iwae_loss, log_densities, make_objective


@pytest.fixture
def vae_and_x():
    torch.manual_seed(1)
    vae = build_vae(data_dim=20, z_dim=4, hidden_dims=(16,))
    x = torch.bernoulli(torch.full((6, 20), 0.4))
    return vae, x


def closed_form_kl(loc, scale):
    """KL(N(loc, diag scale^2) || N(0, I)) = 1/2 sum(loc^2 + scale^2 - 1 - log scale^2)."""
    return 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)


def test_closed_form_kl_formula_matches_torch(vae_and_x):
    vae, x = vae_and_x
    loc, scale = vae.encode(x)
    expected = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(closed_form_kl(loc, scale), expected, atol=1e-5)


def test_monte_carlo_kl_agrees_with_closed_form(vae_and_x):
    vae, x = vae_and_x
    n = 20000
    with torch.no_grad():
        d = log_densities(vae.model, vae.guide, x, num_samples=n)
    mc = d.log_qz - d.log_pz  # (n, batch)
    mean, stderr = mc.mean(0), mc.std(0) / math.sqrt(n)
    exact = closed_form_kl(*vae.encode(x))
    assert ((mean - exact).abs() < 4 * stderr + 1e-4).all()


def test_trace_and_meanfield_losses_agree_in_expectation(vae_and_x):
    vae, x = vae_and_x
    k = 4000
    with torch.no_grad():
        trace = torch.stack([make_objective("trace", k)(vae.model, vae.guide, x) for _ in range(5)])
        meanfield = torch.stack(
            [make_objective("meanfield", k)(vae.model, vae.guide, x) for _ in range(5)]
        )
        # meanfield differs from trace only by replacing the MC KL with the closed form:
        d = log_densities(vae.model, vae.guide, x, num_samples=k)
        recon = d.log_px_given_z.mean(0).sum()
    exact_kl = closed_form_kl(*vae.encode(x)).sum()
    assert meanfield.mean().item() == pytest.approx((-recon + exact_kl).item(), rel=2e-3)
    assert trace.mean().item() == pytest.approx(meanfield.mean().item(), rel=2e-3)


def test_iwae_equals_pyro_renyi_elbo_alpha_zero(vae_and_x):
    vae, x = vae_and_x
    with torch.no_grad():
        pyro.set_rng_seed(7)
        ours = iwae_loss(vae.model, vae.guide, x, num_particles=5).item()
        pyro.set_rng_seed(7)
        renyi = RenyiELBO(
            alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1
        ).loss(vae.model, vae.guide, x)
    assert ours == pytest.approx(renyi, rel=1e-5)


def test_iwae_with_one_particle_is_the_elbo(vae_and_x):
    vae, x = vae_and_x
    with torch.no_grad():
        pyro.set_rng_seed(3)
        iwae1 = iwae_loss(vae.model, vae.guide, x, num_particles=1).item()
        pyro.set_rng_seed(3)
        trace = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()
    assert iwae1 == pytest.approx(trace, rel=1e-5)


def test_iwae_bound_tightens_with_more_particles(vae_and_x):
    vae, x = vae_and_x
    with torch.no_grad():
        bounds = [
            -torch.stack([iwae_loss(vae.model, vae.guide, x, num_particles=k) for _ in range(200)])
            .mean()
            .item()
            for k in (1, 10, 100)
        ]
    assert bounds[0] < bounds[1] < bounds[2]


def test_batch_loss_is_the_sum_of_per_datum_elbos(vae_and_x):
    """Same noise: the objective summed over a batch equals minus the sum of per-datum ELBOs."""
    vae, x = vae_and_x
    with torch.no_grad():
        pyro.set_rng_seed(11)
        batch_loss = make_objective("trace")(vae.model, vae.guide, x).item()
        pyro.set_rng_seed(11)
        per_datum = elbo_terms(vae, x)["elbo"]
    assert batch_loss == pytest.approx(-per_datum.sum().item(), rel=1e-5)
    assert per_datum.shape == (6,)


def test_kl_weight_scales_the_kl_term(vae_and_x):
    vae, x = vae_and_x
    loss = make_objective("meanfield")
    with torch.no_grad():
        pyro.set_rng_seed(5)
        full = loss(vae.model, vae.guide, x, 1.0).item()
        pyro.set_rng_seed(5)
        half = loss(vae.model, vae.guide, x, 0.5).item()
    kl = closed_form_kl(*vae.encode(x)).sum().item()
    assert full - half == pytest.approx(0.5 * kl, rel=1e-4)


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("nope")
