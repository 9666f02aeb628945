"""The model and guide as Pyro programs: sites, shapes, event dims, parameter groups."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae import VAE, build_vae


def traces(vae: VAE, x: torch.Tensor, kl_weight: float = 1.0):
    guide_tr = poutine.trace(vae.guide).get_trace(x, kl_weight)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, kl_weight)
    return model_tr, guide_tr


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_model_and_guide_sites_shapes_and_event_dims(likelihood):
    vae = build_vae(data_dim=12, z_dim=3, hidden_dims=(8,), likelihood=likelihood)
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    model_tr, guide_tr = traces(vae, x)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()

    def latent(tr):
        return {
            n
            for n, s in tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        }

    latent_model, latent_guide = latent(model_tr), latent(guide_tr)
    assert latent_model == latent_guide == {"z"}  # the shared latent site
    z = model_tr.nodes["z"]
    assert z["value"].shape == (5, 3)
    assert z["fn"].event_shape == (3,) and z["fn"].batch_shape == (5,)
    assert guide_tr.nodes["z"]["fn"].event_shape == (3,)
    obs = model_tr.nodes["x"]
    assert obs["is_observed"] and obs["fn"].event_shape == (12,) and obs["fn"].batch_shape == (5,)
    assert obs["log_prob"].shape == (5,)  # one log-density per data point
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    # z is reparameterized: the guide sample carries gradients back to the encoder.
    assert guide_tr.nodes["z"]["value"].requires_grad


def test_networks_are_registered_with_pyro():
    vae = build_vae(data_dim=12, z_dim=3, hidden_dims=(8,), likelihood="gaussian")
    model_tr, guide_tr = traces(vae, torch.rand(4, 12))
    model_params = {n for n, s in model_tr.nodes.items() if s["type"] == "param"}
    guide_params = {n for n, s in guide_tr.nodes.items() if s["type"] == "param"}
    assert any(n.startswith("decoder$$$") for n in model_params)
    assert any(n.startswith("likelihood$$$") for n in model_params)
    assert all(n.startswith("encoder$$$") for n in guide_params) and guide_params


def test_kl_weight_scales_only_the_latent_site():
    vae = build_vae(data_dim=6, z_dim=2, hidden_dims=(4,))
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    model_tr, guide_tr = traces(vae, x, kl_weight=0.25)
    assert model_tr.nodes["z"]["scale"] == 0.25 and guide_tr.nodes["z"]["scale"] == 0.25
    assert model_tr.nodes["x"]["scale"] == 1.0


def test_parameter_groups_partition_all_parameters():
    vae = build_vae(data_dim=10, z_dim=2, hidden_dims=(6, 5), likelihood="gaussian")
    guide = {id(p) for p in vae.guide_parameters()}
    model = {id(p) for p in vae.model_parameters()}
    assert guide.isdisjoint(model)
    assert guide | model == {id(p) for p in vae.parameters()}
    assert id(vae.likelihood.raw_scale) in model


def test_user_methods_shapes_and_ranges():
    vae = build_vae(data_dim=10, z_dim=2, hidden_dims=(6,))
    x = torch.bernoulli(torch.full((7, 10), 0.3))
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (7, 2) and (scale > 0).all()
    assert vae.decode(loc).batch_shape == (7,)
    recon = vae.reconstruct(x)
    assert recon.shape == (7, 10) and ((recon >= 0) & (recon <= 1)).all()
    assert vae.sample(4).shape == (4, 10)


def test_decoder_accepts_particle_dimensions():
    vae = build_vae(data_dim=10, z_dim=2, hidden_dims=(6,))
    with pyro.plate("particles", 3, dim=-2):
        tr = poutine.trace(vae.guide).get_trace(torch.rand(4, 10).round())
    assert tr.nodes["z"]["value"].shape == (3, 4, 2)
