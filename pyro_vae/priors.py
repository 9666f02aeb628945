"""Priors p(z) over the latent code.

A prior is an ``nn.Module`` whose ``forward()`` returns a Pyro distribution over z with event
dimension 1 (shape (z_dim,)); the model samples it inside the data plate, which broadcasts it over
the batch. Learnable parameters of a prior belong to the model side (theta).
"""

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["StandardNormalPrior"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I). Its KL to a diagonal Gaussian q(z|x) has a closed form."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        # Buffers follow the module across devices and are saved in checkpoints.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
