"""Encoder and decoder networks: plain ``torch.nn`` modules, registered with Pyro by the VAE.

The encoder maps x of shape (batch, D) to the parameters (loc, scale) of the diagonal Gaussian
q(z|x), each of shape (batch, z_dim). The decoder maps z of shape (..., z_dim) to the
likelihood's parameters, shape (..., D); leading dimensions are free so that Pyro can stack
several particles in front of the batch.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPEncoder", "MLPDecoder", "mlp"]


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    """A ReLU multilayer perceptron in_dim -> hidden_dims... -> out_dim (no final activation)."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """q_phi(z|x) = N(loc(x), diag scale(x)^2) with one MLP producing both heads.

    The scale is ``softplus(.) + min_scale``: positive, smooth, and bounded away from zero so
    that log q(z|x) stays finite early in training.
    """

    def __init__(
        self, data_dim: int, hidden_dims: Sequence[int], z_dim: int, min_scale: float = 1e-4
    ) -> None:
        super().__init__()
        self.net = mlp(data_dim, hidden_dims, 2 * z_dim)
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale


class MLPDecoder(nn.Module):
    """z -> the likelihood's parameters (Bernoulli logits or Gaussian means), one per pixel."""

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], data_dim: int) -> None:
        super().__init__()
        self.net = mlp(z_dim, hidden_dims, data_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
