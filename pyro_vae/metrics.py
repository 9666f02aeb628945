"""Held-out estimators beyond the ELBO: log-likelihood, active units, mutual information.

- :func:`log_likelihood`: the importance-weighted estimate of log p(x) of Burda et al. (2016),
  L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x), one number per data point.
  E[L_K] <= log p(x), increasing in K, equal to it for every K when q(z|x) = p(z|x).
- :func:`active_units`: Burda et al.'s count of latent dimensions whose posterior mean varies with
  x: A_i = Cov_x(E_q[z_i | x]) > 0.01.
- mutual information I_q(x; z) (He et al. 2019) lives in :mod:`pyro_vae.mutual_info`.

The log-likelihood reads model and guide through Pyro traces; active units read the encoder's
posterior means. Under torch.distributed, :func:`heldout_metrics` shards the ELBO and the
log-likelihood over ranks and reduces them; active units (deterministic) are computed on every
rank and mutual information (random) is rank 0's, so every rank gets the same numbers.
"""

import math

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.errors import UserError
from pyro_vae.evaluation import evaluate_elbo
from pyro_vae.mutual_info import mutual_information
from pyro_vae.traces import log_densities
from pyro_vae.vae import VAE

__all__ = [
    "log_likelihood",
    "posterior_mean_variance",
    "active_units",
    "heldout_metrics",
    "log_likelihood_mean_sem",
    "ACTIVE_UNIT_THRESHOLD",
]

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), Section 5.2


def _check_positive(name: str, value: int) -> None:
    if not (isinstance(value, int) and value > 0):
        raise UserError(f"{name} must be a positive integer (got {value!r})")


@torch.no_grad()
def log_likelihood(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_chunk: int = 100,
) -> torch.Tensor:
    """Importance-weighted estimates L_K(x_n) of log p(x_n), shape (N,), in nats.

    The K = ``num_samples`` log-weights log p(x, z_k) - log q(z_k|x) of each data point (from
    :func:`pyro_vae.traces.log_densities`, so the densities are the model's and guide's own,
    unscaled) are drawn ``sample_chunk`` at a time for ``batch_size`` data points at a time and
    folded into a running logsumexp; the result is logsumexp_k log w_k - log K. Pyro's
    ``RenyiELBO(alpha=0)`` computes the same bound per data point when every latent is local,
    but only returns its sum over the batch, hence the traces.

    Memory is bounded independently of K and N: one chunk holds ``sample_chunk * batch_size``
    decoder evaluations, so the peak is a few tensors of ``sample_chunk * batch_size *
    max(D, widest hidden layer)`` floats -- at the defaults (100 x 100) and MNIST (D = 784),
    about 4 x 31 MB (measured in docs/evaluation.md). Distribution argument checks are switched
    off inside (they re-check the same supports on every chunk and cost ~15% of the time).
    """
    sizes = {"num_samples": num_samples, "batch_size": batch_size, "sample_chunk": sample_chunk}
    for name, value in sizes.items():
        _check_positive(name, value)
    was_training = vae.training
    vae.eval()
    out = []
    with pyro.validation_enabled(False):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            total = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
            for done in range(0, num_samples, sample_chunk):
                k = min(sample_chunk, num_samples - done)
                log_w = log_densities(vae.model, vae.guide, xb, k).log_weights()
                total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
            out.append(total - math.log(num_samples))
    vae.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def _posterior_means(vae: VAE, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [vae.encode(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)]
    )


@torch.no_grad()
def posterior_mean_variance(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Cov_x(E_q[z_i | x]) for every latent dimension i, shape (z_dim,) (unbiased, N - 1)."""
    if x.shape[0] < 2:
        raise UserError("active units need at least 2 data points")
    return _posterior_means(vae, x, batch_size).var(dim=0)


def active_units(
    vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD, batch_size: int = 1000
) -> int:
    """How many latent dimensions have Cov_x(E_q[z_i | x]) > ``threshold`` (Burda et al.)."""
    return int((posterior_mean_variance(vae, x, batch_size) > threshold).sum())


def heldout_metrics(
    vae: VAE, x: torch.Tensor, iw_samples: int, elbo_samples: int = 10
) -> dict[str, float]:
    """Every held-out number of a model on ``x`` (nats per data point unless a count).

    ``elbo``, ``recon``, ``kl`` (:func:`pyro_vae.evaluation.evaluate_elbo` with ``elbo_samples``
    draws per point), ``iwae`` (mean L_K, K = ``iw_samples``) and ``iwae_sem`` (its standard
    error over data points), ``active_units`` and ``mutual_info``.
    """
    _check_positive("iw_samples", iw_samples)
    elbo = evaluate_elbo(vae, x, num_samples=elbo_samples)
    iwae, sem = log_likelihood_mean_sem(vae, x, iw_samples)
    return {
        **elbo,
        "iwae": iwae,
        "iwae_sem": sem,
        "active_units": active_units(vae, x),
        "mutual_info": distributed.from_main(mutual_information(vae, x)),
    }


def log_likelihood_mean_sem(vae: VAE, x: torch.Tensor, iw_samples: int) -> tuple[float, float]:
    """Mean of L_K (:func:`log_likelihood`) over ``x`` and its standard error; under
    torch.distributed each rank scores its shard and the sums are reduced."""
    if not distributed.active():
        ll = log_likelihood(vae, x, num_samples=iw_samples)
        sem = ll.std().item() / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
        return ll.mean().item(), sem
    local = distributed.shard(x)
    ll = log_likelihood(vae, local, iw_samples) if len(local) else local.new_zeros(0)
    ll = ll.double()
    n, total, squares = distributed.all_sum([len(ll), ll.sum().item(), ll.square().sum().item()])
    mean = total / n
    if n < 2:
        return mean, float("nan")
    variance = max(squares - n * mean**2, 0.0) / (n - 1)
    return mean, math.sqrt(variance) / math.sqrt(n)
