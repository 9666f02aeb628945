"""Per-data-point log-densities of the model and guide, read off Pyro traces.

For K samples z_k ~ q(z|x) (vectorized with a particle plate in front of the data plate) this
returns, for every particle k and data point n,

    log p(x_n | z_k),   log p(z_k),   log q(z_k | x_n),   and the model's factors,

each of shape (K, batch). Factors (``pyro.factor`` sites, such as the sparse autoencoder's
penalty) are terms of the model's log-density that are neither the likelihood of x nor the prior
of z; they are kept apart so that the reconstruction term stays log p(x|z). Every estimator in
the library is a reduction of these: ELBO = mean_k(log p(x|z) + factors + log p(z) - log q(z|x));
KL = mean_k(log q - log p(z));
IWAE_K = logsumexp_k(log w_k) - log K. Densities are unscaled (``poutine.scale`` is ignored), so
evaluation always measures the true ELBO whatever beta the model was trained with.
"""

from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["LogDensities", "log_densities"]


class LogDensities(NamedTuple):
    """log p(x|z), log p(z), log q(z|x) and the model's factors, each (num_samples, batch)."""

    log_px_given_z: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    log_factors: torch.Tensor | float = 0.0

    def log_weights(self, kl_weight: float = 1.0) -> torch.Tensor:
        """log p(x|z) + factors + kl_weight * (log p(z) - log q(z|x)); with weight 1,
        log p(x,z)/q(z|x)."""
        return self.log_px_given_z + self.log_factors + kl_weight * (self.log_pz - self.log_qz)


def log_densities(model, guide, x: torch.Tensor, num_samples: int = 1) -> LogDensities:
    """Run the guide, replay the model on its samples, and sum log-densities per data point.

    ``model`` and ``guide`` take ``x`` and keep every site inside ``pyro.plate("data", dim=-1)``
    (all latents local), which is what makes the sums per data point.
    """
    with pyro.plate("particles", num_samples, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    shape = (num_samples, x.shape[0])
    log_px = x.new_zeros(shape)
    log_pz = x.new_zeros(shape)
    log_qz = x.new_zeros(shape)
    log_factors = x.new_zeros(shape)
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            lp = site["fn"].log_prob(site["value"]).expand(shape)
            if site["infer"].get("is_auxiliary"):  # pyro.factor
                log_factors = log_factors + lp
            elif site["is_observed"]:
                log_px = log_px + lp
            else:
                log_pz = log_pz + lp
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            log_qz = log_qz + site["fn"].log_prob(site["value"]).expand(shape)
    return LogDensities(log_px, log_pz, log_qz, log_factors)
