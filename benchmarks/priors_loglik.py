"""Test ELBO and importance-weighted log-likelihood of trained runs (docs/benchmarks-priors.md).

    python benchmarks/priors_loglik.py RUN_DIR [RUN_DIR ...] --samples 500

A small stand-in for the evaluation module's official estimator: for each test image,

    log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K,   z_k ~ q(z | x),

from :func:`pyro_vae.traces.log_densities`, with K = ``--samples`` (Burda et al. 2016 use 5000);
the ELBO is the mean of the same log-weights. The test set is the run's own (same binarization).
"""

import argparse
import math
import time

import torch

from pyro_vae import load_data, load_vae
from pyro_vae.traces import log_densities


@torch.no_grad()
def iw_estimates(vae, x: torch.Tensor, samples: int, batch_size: int) -> tuple[float, float]:
    """Mean ELBO and mean IW log-likelihood bound per data point over ``x``."""
    elbo = loglik = 0.0
    for start in range(0, x.shape[0], batch_size):
        log_w = log_densities(vae.model, vae.guide, x[start : start + batch_size], samples)
        log_w = log_w.log_weights()
        elbo += log_w.mean(0).sum().item()
        loglik += (torch.logsumexp(log_w, 0) - math.log(samples)).sum().item()
    return elbo / x.shape[0], loglik / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--limit-test", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | prior | test ELBO | test log p(x) (IW, K) | eval seconds |")
    print("|---|---|---|---|---|")
    for run_dir in args.runs:
        vae, config = load_vae(run_dir)
        data = load_data(
            config.dataset, config.data_dir, config.binarize, config.val_size,
            limit_test=args.limit_test, seed=config.seed,
        )  # fmt: skip
        start = time.perf_counter()
        elbo, loglik = iw_estimates(vae, data.test, args.samples, args.batch_size)
        seconds = time.perf_counter() - start
        print(
            f"| {run_dir} | {config.prior} | {elbo:.2f} | {loglik:.2f} (K={args.samples}) "
            f"| {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
