"""Held-out estimators beyond the ELBO, and the table of metrics a model can ask for.

- :func:`log_likelihood`: the importance-weighted estimate of log p(x) of Burda et al. (2016),
  L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x), one number per data point.
  E[L_K] <= log p(x), increasing in K, equal to it for every K when q(z|x) = p(z|x).
- :func:`active_units`: Burda et al.'s count of latent dimensions whose posterior mean varies with
  x: A_i = Cov_x(E_q[z_i | x]) > 0.01.
- mutual information I_q(x; z) (He et al. 2019) lives in :mod:`pyro_vae.evaluation.mutual_info`.
- :func:`reconstruction_metrics`: log p(x | z = codes(x)) and the squared error of the
  reconstruction, comparable across models (the LatentModel's codes are its posterior means).
- :func:`sparsity_metrics`: each code unit's mean activation against the sparse autoencoder's
  target, and the penalty's KL.
- :func:`denoising_metrics`: the reconstruction metrics from corrupted inputs (fixed noise seed).
- :func:`~pyro_vae.evaluation.rollouts.rollout_metrics`: a sequence model's predictions of
  future frames against the truth and a baseline.
- :func:`codebook_metrics`: a VQ-VAE's codebook usage: codes used and the perplexity of the
  code assignments.

:data:`METRICS` maps each name a model lists in ``model.metrics`` to its estimator;
:func:`heldout_metrics` runs those that apply and says why the others are left out.

The log-likelihood reads model and guide through Pyro traces; active units read the encoder's
posterior means. Under torch.distributed, :func:`heldout_metrics` shards the ELBO and the
log-likelihood over ranks and reduces them; active units (deterministic) are computed on every
rank and mutual information (random) is rank 0's, so every rank gets the same numbers.
"""

import functools
import math
from collections.abc import Callable

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae.errors import UserError
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.mutual_info import mutual_information
from pyro_vae.evaluation.rollouts import rollout_metrics
from pyro_vae.infer.traces import log_densities
from pyro_vae.models.autoencoders import sparsity_kl
from pyro_vae.models.base import LatentModel
from pyro_vae.models.corruption import Corruption

__all__ = [
    "log_likelihood",
    "posterior_mean_variance",
    "active_units",
    "reconstruction_metrics",
    "sparsity_metrics",
    "denoising_metrics",
    "code_assignments",
    "codebook_metrics",
    "METRICS",
    "heldout_metrics",
    "log_likelihood_mean_sem",
    "ACTIVE_UNIT_THRESHOLD",
    "CORRUPTION_SEED",
]

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016), Section 5.2
CORRUPTION_SEED = 20080705  # one fixed corruption of the test set, whatever the run's seed


def _check_positive(name: str, value: int) -> None:
    if not (isinstance(value, int) and value > 0):
        raise UserError(f"{name} must be a positive integer (got {value!r})")


@torch.no_grad()
def log_likelihood(
    vae: LatentModel,
    x: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_chunk: int = 100,
    progress: bool = False,
) -> torch.Tensor:
    """Importance-weighted estimates L_K(x_n) of log p(x_n), shape (N,), in nats; ``progress``
    shows a bar (tqdm, on stderr) over the data points with the time left.

    The K = ``num_samples`` log-weights log p(x, z_k) - log q(z_k|x) of each data point (from
    :func:`pyro_vae.infer.traces.log_densities`, so the densities are the model's and guide's own,
    unscaled) are drawn ``sample_chunk`` at a time for ``batch_size`` data points at a time and
    folded into a running logsumexp; the result is logsumexp_k log w_k - log K. Pyro's
    ``RenyiELBO(alpha=0)`` computes the same bound per data point when every latent is local,
    but only returns its sum over the batch, hence the traces.

    Memory is bounded independently of K and N: one chunk holds ``sample_chunk * batch_size``
    decoder evaluations, so the peak is a few tensors of ``sample_chunk * batch_size *
    max(D, widest hidden layer)`` floats -- at the defaults (100 x 100) and MNIST (D = 784),
    about 4 x 31 MB (measured in docs/evaluation.md). Distribution argument checks are switched
    off inside (they re-check the same supports on every chunk and cost ~15% of the time).

    Call :func:`pyro_vae.keep_freed_memory` once first (the command line does): without it
    glibc hands each chunk's memory back to the kernel and the next chunk page-faults it in
    again, up to 1.3 times the time of the same loop written by hand (:mod:`pyro_vae.memory`).
    """
    sizes = {"num_samples": num_samples, "batch_size": batch_size, "sample_chunk": sample_chunk}
    for name, value in sizes.items():
        _check_positive(name, value)
    was_training = vae.training
    vae.eval()
    out = []
    bar = tqdm(  # counts importance samples, so a large K shows its rate and time left at once
        total=x.shape[0] * num_samples,
        desc=f"L_{num_samples} over {x.shape[0]} images",
        unit=" samples",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    with pyro.validation_enabled(False), bar:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            total = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
            for done in range(0, num_samples, sample_chunk):
                k = min(sample_chunk, num_samples - done)
                log_w = log_densities(vae.model, vae.guide, xb, k).log_weights()
                total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
                bar.update(xb.shape[0] * k)
            out.append(total - math.log(num_samples))
    vae.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def _posterior_means(vae: LatentModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([vae.codes(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def posterior_mean_variance(
    vae: LatentModel, x: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """Cov_x(E_q[z_i | x]) for every latent dimension i, shape (z_dim,) (unbiased, N - 1)."""
    if x.shape[0] < 2:
        raise UserError("active units need at least 2 data points")
    return _posterior_means(vae, x, batch_size).var(dim=0)


def active_units(
    vae: LatentModel,
    x: torch.Tensor,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    batch_size: int = 1000,
) -> int:
    """How many latent dimensions have Cov_x(E_q[z_i | x]) > ``threshold`` (Burda et al.)."""
    return int((posterior_mean_variance(vae, x, batch_size) > threshold).sum())


@torch.no_grad()
def reconstruction_metrics(
    model: LatentModel, x: torch.Tensor, inputs: torch.Tensor | None = None, batch_size: int = 1000
) -> dict[str, float]:
    """``recon_at_code``: mean log p(x | z = codes(inputs)) in nats, and ``sq_error``: mean
    ||x - E[x | z = codes(inputs)]||^2 per data point (``inputs`` default: ``x`` itself).

    Both read the model at one point per data point, the AE's code or the VAE's posterior mean,
    so they compare across models (the ELBO's recon term averages over q(z|x) instead).
    """
    inputs = x if inputs is None else inputs
    was_training = model.training
    model.eval()
    log_px, sq = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb, zb = x[start : start + batch_size], model.codes(inputs[start : start + batch_size])
        log_px += model.decode(zb).log_prob(xb).sum().item()
        sq += (xb - model.decode_mean(zb)).pow(2).sum().item()
    model.train(was_training)
    return {"recon_at_code": log_px / x.shape[0], "sq_error": sq / x.shape[0]}


@torch.no_grad()
def sparsity_metrics(model: LatentModel, x: torch.Tensor) -> dict:
    """Mean activation of each code unit over ``x`` against the target: ``mean_activation``
    (per unit, a list), its mean, min and max, and ``sparsity_kl`` = sum_j KL(rho || rho_hat_j)
    over the whole of ``x`` (the penalty before its weight)."""
    codes = _posterior_means(model, x, 1000)
    rho_hat = codes.mean(0)
    return {
        "sparsity_target": model.sparsity,
        "mean_activation": rho_hat.tolist(),
        "mean_activation_avg": rho_hat.mean().item(),
        "mean_activation_min": rho_hat.min().item(),
        "mean_activation_max": rho_hat.max().item(),
        "sparsity_kl": sparsity_kl(codes, model.sparsity).item(),
    }


def corrupt_fixed(x: torch.Tensor, spec: str, seed: int = CORRUPTION_SEED) -> torch.Tensor:
    """``x`` corrupted as ``spec`` says with a fixed seed: the same test inputs for every run."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return Corruption(spec)(x, generator=generator)


def denoising_metrics(model: LatentModel, x: torch.Tensor, spec: str | None = None) -> dict:
    """:func:`reconstruction_metrics` of the clean ``x`` from corrupted inputs (the model's own
    corruption, or ``spec``): does the model undo the noise? Keys ``corrupted_recon_at_code``,
    ``corrupted_sq_error`` and ``corruption``."""
    spec = spec or model.corruption.spec
    m = reconstruction_metrics(model, x, inputs=corrupt_fixed(x, spec))
    return {f"corrupted_{k}": v for k, v in m.items()} | {"corruption": spec}


@torch.no_grad()
def code_assignments(model: LatentModel, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """How many grid positions of ``x`` chose each code of a VQ-VAE, shape (K,)."""
    counts = torch.zeros(model.codebook.size, dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        counts += model.codebook.usage_counts(model.code_indices(x[start : start + batch_size]))
    return counts


def codebook_metrics(model: LatentModel, x: torch.Tensor) -> dict:
    """``codes_used``: codes chosen at least once over ``x``; ``perplexity``: exp of the
    entropy of the code frequencies (K when all codes are equally used, 1 for one code);
    ``codebook_size``: K."""
    counts = code_assignments(model, x).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {
        "codes_used": int((counts > 0).sum()),
        "perplexity": entropy.exp().item(),
        "codebook_size": model.codebook.size,
    }


def _elbo(model: LatentModel, x: torch.Tensor, iw_samples: int) -> dict:
    return evaluate_elbo(model, x, num_samples=10)


def _log_likelihood(
    model: LatentModel, x: torch.Tensor, iw_samples: int, progress: bool = False
) -> dict:
    iwae, sem = log_likelihood_mean_sem(model, x, iw_samples, progress)
    return {"iwae": iwae, "iwae_sem": sem}


#: metric name (as models list them in ``model.metrics``) -> estimator(model, x, iw_samples)
#: returning a dict of numbers (nats per data point unless a count).
METRICS: dict[str, Callable[[LatentModel, torch.Tensor, int], dict]] = {
    "elbo": _elbo,
    "reconstruction": lambda model, x, k: reconstruction_metrics(model, x),
    "log_likelihood": _log_likelihood,
    "active_units": lambda model, x, k: {"active_units": active_units(model, x)},
    "mutual_info": lambda model, x, k: {
        "mutual_info": distributed.from_main(mutual_information(model, x))
    },
    "sparsity": lambda model, x, k: sparsity_metrics(model, x),
    "denoising": lambda model, x, k: denoising_metrics(model, x),
    "codebook": lambda model, x, k: codebook_metrics(model, x),
    "rollouts": lambda model, x, k: rollout_metrics(model, x),
}


def heldout_metrics(
    vae: LatentModel,
    x: torch.Tensor,
    iw_samples: int,
    corrupt: str | None = None,
    progress: bool = False,
) -> dict:
    """Every held-out number that applies to a model, on ``x``.

    For a VAE: ``elbo``, ``recon``, ``kl`` (:func:`pyro_vae.evaluation.elbo.evaluate_elbo`, 10
    draws per point), ``recon_at_code`` and ``sq_error``, ``iwae`` (mean L_K, K =
    ``iw_samples``) and ``iwae_sem`` (its standard error over data points), ``active_units`` and
    ``mutual_info``; for other models those in ``vae.metrics``, and under ``not_applicable`` the
    reason each standard metric is left out. ``corrupt``: also the denoising metrics with that
    corruption (any model; a denoising model uses its own corruption by default). ``progress``:
    a progress bar over the log-likelihood's data points, the one long estimate.
    """
    _check_positive("iw_samples", iw_samples)
    result: dict = {}
    for name in vae.metrics:
        estimate = METRICS[name]
        if name == "log_likelihood":
            estimate = functools.partial(_log_likelihood, progress=progress)
        if name != "denoising" or corrupt is None:
            result |= estimate(vae, x, iw_samples)
    if corrupt is not None:
        result |= denoising_metrics(vae, x, corrupt)
    if vae.not_applicable:
        result["not_applicable"] = dict(vae.not_applicable)
    return result


def log_likelihood_mean_sem(
    vae: LatentModel, x: torch.Tensor, iw_samples: int, progress: bool = False
) -> tuple[float, float]:
    """Mean of L_K (:func:`log_likelihood`) over ``x`` and its standard error; under
    torch.distributed each rank scores its shard and the sums are reduced (``progress``: a bar
    on rank 0)."""
    if not distributed.active():
        ll = log_likelihood(vae, x, num_samples=iw_samples, progress=progress)
        sem = ll.std().item() / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
        return ll.mean().item(), sem
    local = distributed.shard(x)
    show = progress and distributed.is_main()
    ll = log_likelihood(vae, local, iw_samples, progress=show) if len(local) else local.new_zeros(0)
    ll = ll.double()
    n, total, squares = distributed.all_sum([len(ll), ll.sum().item(), ll.square().sum().item()])
    mean = total / n
    if n < 2:
        return mean, float("nan")
    variance = max(squares - n * mean**2, 0.0) / (n - 1)
    return mean, math.sqrt(variance) / math.sqrt(n)
