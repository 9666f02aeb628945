"""Likelihoods p_theta(x|z): turn the decoder's output into a distribution over a data point.

A likelihood is an ``nn.Module`` mapping decoder outputs of shape (..., D) to a Pyro distribution
with event dimension 1. It may own parameters (the Gaussian's learned scale), which then belong
to the model side (theta).
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "make_likelihood", "LIKELIHOODS"]


class BernoulliLikelihood(nn.Module):
    """x_d ~ Bernoulli(sigmoid(logits_d)): for binary data only (binarize MNIST first)."""

    requires_binary_data = True

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=logits).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities, the picture of p(x|z) that figures show."""
        return torch.sigmoid(logits)


class GaussianLikelihood(nn.Module):
    """x ~ N(loc(z), diag sigma^2) with sigma a learned per-pixel scale shared by all data points.

    ``sigma = softplus(raw) + min_scale``; the floor keeps the density bounded on pixels that are
    constant in the data (MNIST's border), where an unbounded sigma -> 0 would dominate the loss.
    """

    requires_binary_data = False

    def __init__(self, data_dim: int, init_scale: float = 0.5, min_scale: float = 0.01) -> None:
        super().__init__()
        if not init_scale > min_scale:
            raise ValueError("init_scale must exceed min_scale")
        raw = math.log(math.expm1(init_scale - min_scale))  # inverse softplus
        self.raw_scale = nn.Parameter(torch.full((data_dim,), raw))
        self.min_scale = min_scale

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, loc: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, self.scale).to_event(1)

    def mean(self, loc: torch.Tensor) -> torch.Tensor:
        return loc.clamp(0.0, 1.0)


LIKELIHOODS = ("bernoulli", "gaussian")


def make_likelihood(name: str, data_dim: int) -> nn.Module:
    """Build a likelihood by its command-line name."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(f"unknown likelihood {name!r}; choose from {', '.join(LIKELIHOODS)}")
