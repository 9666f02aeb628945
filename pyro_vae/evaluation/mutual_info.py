"""Mutual information I_q(x; z) between data and code under the encoder's joint q(x, z).

He et al. (2019, "Lagging inference networks and posterior collapse", eq. 5 and their
``calc_mi``) estimate it per minibatch of N data points as

    I_q(x; z) = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)],
    log q(z) ~= logsumexp_n log q(z | x_n) - log N      (aggregate posterior over the batch),

with the first term in closed form (a diagonal Gaussian's negative entropy) and one z ~ q(z|x_m)
per data point for the second. Up to Monte Carlo error (one z per data point, so small
negative values occur) the estimate lies in [0, log N]; a collapsed encoder (q(z|x) = q(z) for
every x) gives about 0. Minibatch estimates are averaged, weighted by size.
"""

import math

import pyro.distributions as dist
import torch

from pyro_vae.models.vae import VAE

__all__ = ["mutual_information"]


@torch.no_grad()
def batch_mutual_information(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """He et al.'s estimate from the (N, z_dim) parameters of q(z|x_n) for one minibatch."""
    posterior = dist.Normal(loc, scale).to_event(1)
    neg_entropy = -posterior.entropy().mean()
    z = posterior.sample()  # (N, z_dim): z_m ~ q(z | x_m)
    # log q(z_m | x_n) for every pair: (N_z, 1, z_dim) against a batch of N_x posteriors.
    cross = dist.Normal(loc, scale).to_event(1).log_prob(z.unsqueeze(1))  # (N_z, N_x)
    log_qz = torch.logsumexp(cross, dim=1) - math.log(loc.shape[0])
    return neg_entropy - log_qz.mean()


@torch.no_grad()
def mutual_information(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> float:
    """Estimate I_q(x; z) in nats over ``x`` (N, D), in minibatches of ``batch_size``."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        loc, scale = vae.encode(xb)
        total += batch_mutual_information(loc, scale).item() * xb.shape[0]
    return total / x.shape[0]
