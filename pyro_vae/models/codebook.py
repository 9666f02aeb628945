"""The VQ-VAE's codebook: K code vectors, nearest-neighbour quantization and its two updates.

Quantization (van den Oord et al. 2017, eq. 1-2): each encoder output vector z_e is replaced by
its nearest code, k = argmin_j ||z_e - e_j||^2, z_q = e_k. The codes learn in one of two ways
(``--codebook-update``):

- ``loss``: the codes are model-side parameters trained by the codebook loss
  ||sg[z_e] - e_k||^2 (the VQ-VAE's guide adds it; :mod:`pyro_vae.models.vqvae`).
- ``ema``: the codes are buffers moved by exponential moving averages of the encoder outputs
  assigned to them (the paper's Appendix A.1): with n_j vectors assigned to code j in a
  minibatch and s_j their sum,

      N_j <- gamma N_j + (1 - gamma) n_j,    m_j <- gamma m_j + (1 - gamma) s_j,
      e_j <- m_j / N~_j,    N~_j = (N_j + eps) / (sum_i N_i + K eps) * sum_i N_i,

  gamma = 0.99, eps = 1e-5 (Laplace smoothing keeps e_j finite for codes that lose their
  vectors). N starts at 1 and m at the initial codes, so an unused code stays where it is.
  This is online k-means: the assignment is k-means' E-step, the average its M-step.

Dead codes: ``usage`` is a moving average (same gamma) of n_j. After each model-side update, a
code whose usage is below ``DEAD_USAGE`` = 0.01 is restarted at a randomly chosen encoder
output of the minibatch (its usage reset to 1, and under ``ema`` its N_j to 1 and m_j to the new
vector). Usage starts at 0, so the first update places every code that no vector chose on an
encoder output (a data-dependent initialization); afterwards a code chosen by no vector for
about 460 updates (1 epoch of MNIST at batch 128) is restarted.

Under torchrun the counts and sums are summed over ranks before the update, and the restarted
codes are rank 0's, so every rank keeps the same codebook.
"""

import torch
from torch import nn

from pyro_vae import distributed

__all__ = ["CODEBOOK_UPDATES", "DEAD_USAGE", "Codebook", "nearest_code", "ema_update"]

CODEBOOK_UPDATES = ("loss", "ema")
DEAD_USAGE = 0.01  # a code whose moving-average count of assigned vectors falls below is dead


def nearest_code(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (Euclidean) for each vector of ``z`` (..., D); codes (K, D).

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 in one matrix product; ties go to the lowest index.
    """
    flat = z.reshape(-1, z.shape[-1])
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None, :]
    return distances.argmin(1).reshape(z.shape[:-1])


def ema_update(
    count: torch.Tensor,
    total: torch.Tensor,
    assigned: torch.Tensor,
    summed: torch.Tensor,
    decay: float,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One EMA step in place on ``count`` (K,) and ``total`` (K, D) from this minibatch's
    assignment counts ``assigned`` (K,) and sums ``summed`` (K, D); returns the new codes."""
    count.mul_(decay).add_(assigned, alpha=1 - decay)
    total.mul_(decay).add_(summed, alpha=1 - decay)
    n = count.sum()
    smoothed = (count + eps) / (n + count.numel() * eps) * n
    return total / smoothed[:, None]


class Codebook(nn.Module):
    """K code vectors of size D with the update ``update`` (``loss`` or ``ema``).

    Codes start uniform in (-1/K, 1/K) as in the paper's code; the first update moves the unused
    ones onto encoder outputs (see the module docstring).
    """

    def __init__(self, size: int, dim: int, update: str = "loss", decay: float = 0.99) -> None:
        super().__init__()
        if update not in CODEBOOK_UPDATES:
            raise ValueError(f"unknown codebook update {update!r}")
        self.update, self.decay = update, decay
        initial = torch.empty(size, dim).uniform_(-1 / size, 1 / size)
        if update == "loss":
            self.vectors = nn.Parameter(initial)
        else:
            self.register_buffer("vectors", initial)
            self.register_buffer("ema_count", torch.ones(size))
            self.register_buffer("ema_total", initial.clone())
        self.register_buffer("usage", torch.zeros(size))
        self._known: tuple[torch.Tensor, torch.Tensor] | None = None

    def remember(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """Record that ``vectors`` (a tensor of codes) are the codes ``indices``, for the next
        :meth:`indices_of` of that very tensor."""
        self._known = (vectors, indices)

    @property
    def size(self) -> int:
        return self.vectors.shape[0]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices of ``z`` (..., D), shape (...)."""
        return nearest_code(z.detach(), self.vectors.detach())

    def indices_of(self, z: torch.Tensor) -> torch.Tensor:
        """The code indices of ``z`` (..., D): those :meth:`remember` recorded, used once, when
        ``z`` is the remembered tensor or a broadcast of it (a Delta site's sample is
        ``v.expand(...)``, a view of the same memory: the guide's codes, replayed into the model
        by Pyro's ELBOs, need no second search); otherwise the nearest codes."""
        known, self._known = self._known, None
        if known is not None:
            vectors, indices = known
            n = vectors.dim()
            same_memory = z.data_ptr() == vectors.data_ptr() and z.dim() >= n
            if (
                same_memory
                and z.shape[-n:] == vectors.shape
                and z.stride()[-n:] == vectors.stride()
            ):
                return indices.expand(z.shape[:-1])
        return self.nearest(z)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """The code vectors of ``indices`` (...), shape (..., D)."""
        return self.vectors[indices]

    @torch.no_grad()
    def after_model_update(
        self, z_e: torch.Tensor, indices: torch.Tensor, restart: bool = True
    ) -> int:
        """The non-gradient part of a model-side update, from a minibatch's encoder outputs
        ``z_e`` (..., D) and their codes: the EMA step (``ema``), the usage average and (if
        ``restart``) the dead-code restarts. Returns the number of codes restarted."""
        flat, k = z_e.reshape(-1, z_e.shape[-1]), indices.reshape(-1)
        assigned = torch.bincount(k, minlength=self.size).to(flat.dtype)
        summed = torch.zeros_like(self.vectors).index_add_(0, k, flat)
        if distributed.active():
            assigned, summed = _all_sum(assigned), _all_sum(summed)
        if self.update == "ema":
            codes = ema_update(self.ema_count, self.ema_total, assigned, summed, self.decay)
            self.vectors.copy_(codes)
        self.usage.mul_(self.decay).add_(assigned, alpha=1 - self.decay)
        dead = (self.usage < DEAD_USAGE).nonzero().squeeze(1)
        if restart and len(dead):
            self._restart(dead, flat)
        return len(dead) if restart else 0

    def _restart(self, dead: torch.Tensor, candidates: torch.Tensor) -> None:
        """Move the ``dead`` codes onto randomly chosen rows of ``candidates`` (rank 0's)."""
        chosen = candidates[torch.randint(len(candidates), (len(dead),), device=dead.device)]
        self.vectors[dead] = chosen
        self.usage[dead] = 1.0
        if self.update == "ema":
            self.ema_count[dead] = 1.0
            self.ema_total[dead] = chosen
        distributed.broadcast_module(self)

    @torch.no_grad()
    def usage_counts(self, indices: torch.Tensor) -> torch.Tensor:
        """How many of ``indices`` chose each code, shape (K,)."""
        return torch.bincount(indices.reshape(-1), minlength=self.size)


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t
