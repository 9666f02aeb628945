"""Input corruption for denoising autoencoders: what the encoder sees, never what is scored.

A denoising model's guide encodes a corrupted copy x~ ~ C(x~ | x) of each training image, while
the likelihood scores the clean x (Vincent et al. 2008 for the autoencoder; Im et al. 2017, the
denoising VAE, whose bound E_C(x~|x) E_q(z|x~)[log p(x, z) - log q(z|x~)] is what Pyro's ELBO
estimates when the guide corrupts its input). Three kinds (``--corrupt``):

- ``gaussian:SIGMA``: x~ = x + SIGMA * eps, eps ~ N(0, I); not clipped, so the noise variance is
  exactly SIGMA^2 (an encoder takes any real input).
- ``salt-pepper:P``: each pixel, with probability P, is replaced by 0 or 1 (equally likely).
- ``mask:P``: each pixel, with probability P, is set to 0 (masking noise).

Noise is drawn from the global torch generator, which :func:`pyro_vae.fit` seeds and every
checkpoint saves, so a corrupted run is deterministic and resumes bit for bit; it is redrawn for
every minibatch. Models corrupt only in training mode (``module.train()``, like dropout):
evaluation encodes clean images unless it asks for corrupted ones
(:func:`pyro_vae.evaluation.metrics.denoising_metrics`).
"""

import torch
from torch import nn

from pyro_vae.errors import UserError

__all__ = ["CORRUPT_HELP", "Corruption", "parse_corruption"]

CORRUPT_HELP = "gaussian:SIGMA (SIGMA >= 0), salt-pepper:P or mask:P (P in [0, 1])"
KINDS = ("gaussian", "salt-pepper", "mask")


def parse_corruption(spec: str) -> tuple[str, float]:
    """``"mask:0.5"`` -> ``("mask", 0.5)``; a malformed spec is a one-line :class:`UserError`."""
    kind, _, number = spec.partition(":")
    try:
        level = float(number)
    except ValueError:
        raise UserError(f"bad corruption {spec!r}; use {CORRUPT_HELP}") from None
    if kind not in KINDS:
        raise UserError(f"unknown corruption {kind!r} in {spec!r}; use {CORRUPT_HELP}")
    if kind == "gaussian" and not 0 <= level < float("inf"):
        raise UserError(f"gaussian noise needs SIGMA >= 0, got {number!r}")
    if kind != "gaussian" and not 0 <= level <= 1:
        raise UserError(f"{kind} needs a probability P in [0, 1], got {number!r}")
    return kind, level


class Corruption(nn.Module):
    """x -> a corrupted copy x~ (same shape), drawn fresh on every call; no parameters.

    Args:
        spec: ``gaussian:SIGMA``, ``salt-pepper:P`` or ``mask:P``.
    """

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.kind, self.level = parse_corruption(spec)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "gaussian":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return x + self.level * noise
        hit = torch.rand(x.shape, generator=generator, device=x.device) < self.level
        if self.kind == "mask":
            return x.masked_fill(hit, 0.0)
        salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)

    def extra_repr(self) -> str:
        return self.spec
