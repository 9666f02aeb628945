"""Training objectives: each is a function ``loss(model, guide, x, kl_weight) -> Tensor``.

The returned tensor is the negative bound summed over the minibatch (differentiable); trainers
divide by the batch size to report nats per data point.

- ``trace``: ``Trace_ELBO``, Monte Carlo estimate of the KL term (works with any prior).
- ``meanfield``: ``TraceMeanField_ELBO``, closed-form KL(q || p) where torch knows it (diagonal
  Gaussian guide and N(0, I) prior); Pyro silently falls back to Monte Carlo otherwise.
- ``iwae``: the importance-weighted bound of Burda et al. (2016),
  L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)], per data point. This is what
  ``RenyiELBO(alpha=0)`` computes when all latents are local (tested against it), written on
  :func:`pyro_vae.infer.traces.log_densities` because RenyiELBO only offers
  ``loss_and_grads``, which calls ``backward`` itself and so cannot restrict gradients to one
  parameter group.
"""

import math
from collections.abc import Callable

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.infer.traces import log_densities

__all__ = ["OBJECTIVES", "make_objective", "iwae_loss"]

OBJECTIVES = ("trace", "meanfield", "iwae")

Objective = Callable[..., torch.Tensor]


def iwae_loss(model, guide, x: torch.Tensor, kl_weight: float = 1.0, num_particles: int = 5):
    """Negative IWAE bound with ``num_particles`` importance samples, summed over the batch."""
    log_w = log_densities(model, guide, x, num_particles).log_weights(kl_weight)
    return -(torch.logsumexp(log_w, dim=0) - math.log(num_particles)).sum()


def make_objective(name: str, num_particles: int = 1) -> Objective:
    """The loss function for ``--elbo name``; particles are vectorized when num_particles > 1."""
    if name == "iwae":
        return lambda model, guide, x, kl_weight=1.0: iwae_loss(
            model, guide, x, kl_weight, num_particles
        )
    elbo_class = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}.get(name)
    if elbo_class is None:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    elbo = elbo_class(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,
    )
    return elbo.differentiable_loss
