"""The importance-weighted log-likelihood through the library against the same computation by
hand, interleaved in one process; and peak memory.

Times :func:`pyro_vae.log_likelihood` (K importance samples per image, chunked over samples and
images) and :func:`hand_written_log_likelihood` (the same modules, chunks and random draws, in
plain PyTorch) on MNIST test images, alternating library and hand-written runs (A B, B A, ...,
after one untimed run of each) so that machine noise hits both alike. For each K it prints both
medians, the median ratio library / hand-written, the user and system CPU seconds and minor page
faults of each, and checks that both give the same numbers.

``--malloc keep`` (the default, as every ``pyro-vae`` command runs) first calls
:func:`pyro_vae.keep_freed_memory`; ``--malloc default`` leaves glibc's ``malloc`` as it is, which
hands each chunk's memory back to the kernel (page faults: see :mod:`pyro_vae.memory`).

    python benchmarks/bench_evaluation.py                          # untrained 784-400-50 VAE
    python benchmarks/bench_evaluation.py --run RUN_DIR --images 300 --samples 5000
    python benchmarks/bench_evaluation.py --malloc default     # glibc's own thresholds
    python benchmarks/bench_evaluation.py --images 20 --samples 100 --repeats 1  # seconds
    python benchmarks/bench_evaluation.py --images 10000 --elbo-batch 1000  # the epoch's ELBO

``--run`` loads a trained run (an MLP VAE with the N(0, I) prior and the Bernoulli likelihood,
the model the hand-written version implements); without it the network is untrained, which
does not change the work. Needs MNIST (PYRO_VAE_DATA_DIR or --data-dir); --synthetic uses
random binary images instead.
"""

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from pyro_vae import (
    BernoulliLikelihood,
    StandardNormalPrior,
    build_vae,
    evaluate_elbo,
    keep_freed_memory,
    load_data,
    load_vae,
    log_likelihood,
)
from pyro_vae.models.vae import VAE

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@torch.no_grad()
def hand_written_log_likelihood(
    encoder, decoder, x: torch.Tensor, num_samples: int, batch_size: int = 100, chunk: int = 100
) -> torch.Tensor:
    """L_K(x_n) of a VAE with N(0, I) prior, diagonal Gaussian q(z|x) and Bernoulli logits, in
    plain PyTorch: per chunk, encode, draw z = loc + scale * eps (eps drawn as torch's Normal
    draws it, so that one seed gives the library's draws), decode, and fold the log-weights
    log p(x|z) + log p(z) - log q(z|x) into a running logsumexp."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        total = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        for done in range(0, num_samples, chunk):
            log_px, log_pz, log_qz = _log_densities(
                encoder, decoder, xb, min(chunk, num_samples - done)
            )
            total = torch.logaddexp(total, torch.logsumexp(log_px + log_pz - log_qz, dim=0))
        out.append(total - math.log(num_samples))
    return torch.cat(out)


def _log_densities(encoder, decoder, xb: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """log p(x|z), log p(z) and log q(z|x), each (k, batch), for k draws z ~ q(z|x) (eps drawn
    as torch's Normal draws it)."""
    loc, scale = encoder(xb)
    eps = torch.randn(k, *loc.shape, dtype=loc.dtype, device=loc.device)
    z = loc + eps * scale
    logits = decoder(z)
    log_px = -F.binary_cross_entropy_with_logits(
        logits, xb.expand_as(logits), reduction="none"
    ).sum(-1)
    log_pz = (-0.5 * z.square() - HALF_LOG_2PI).sum(-1)
    log_qz = (-0.5 * eps.square() - scale.log() - HALF_LOG_2PI).sum(-1)
    return log_px, log_pz, log_qz


@torch.no_grad()
def hand_written_elbo(encoder, decoder, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The mean ELBO, reconstruction term and KL per image that
    :func:`pyro_vae.evaluate_elbo` gives (one draw per image, minibatches of ``batch_size``),
    in plain PyTorch with the same draws."""
    totals = torch.zeros(3, dtype=torch.float64)
    for xb in x.split(batch_size):
        log_px, log_pz, log_qz = _log_densities(encoder, decoder, xb, 1)
        recon, kl = log_px.mean(0), (log_qz - log_pz).mean(0)
        totals += torch.stack([(recon - kl).sum(), recon.sum(), kl.sum()]).double()
    return totals / x.shape[0]


def _timed(fn, seed: int) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(seed)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return result, {
        "seconds": seconds,
        "user": after.ru_utime - before.ru_utime,
        "system": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
    }


def _model(run: str | None) -> VAE:
    if run is None:
        torch.manual_seed(0)
        return build_vae(784)
    vae, _ = load_vae(run)
    supported = (
        isinstance(vae, VAE)
        and isinstance(vae.prior, StandardNormalPrior)
        and isinstance(vae.likelihood, BernoulliLikelihood)
    )
    if not supported:
        raise SystemExit(
            f"{run}: the hand-written reference implements the VAE with --prior normal and "
            "--likelihood bernoulli only"
        )
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a trained run folder (default: untrained)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep")
    parser.add_argument(
        "--elbo-batch",
        type=int,
        default=None,
        metavar="B",
        help="time the per-epoch test ELBO (evaluate_elbo, one draw per image, minibatches of "
        "B) against the same by hand instead of L_K",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = args.malloc == "keep" and keep_freed_memory()
    if args.synthetic:
        x = torch.bernoulli(torch.full((args.images, 784), 0.13))
    else:
        x = load_data("mnist", args.data_dir, limit_test=args.images).test
    vae = _model(args.run).eval()
    ways = {
        "library": lambda k: log_likelihood(vae, x, num_samples=k),
        "by hand": lambda k: hand_written_log_likelihood(vae.encoder, vae.decoder, x, k),
    }
    if args.elbo_batch:  # K = 0 stands for the per-epoch test ELBO (one draw per image)
        args.samples, b = [0], args.elbo_batch
        ways = {
            "library": lambda k: torch.tensor(list(evaluate_elbo(vae, x, b).values())).double(),
            "by hand": lambda k: hand_written_elbo(vae.encoder, vae.decoder, x, b),
        }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {x.shape[0]} images")
    print(f"model: {args.run or 'untrained 784-400-50 VAE'}; {args.repeats} interleaved repeats")
    print(f"malloc: {'keeps freed memory' if kept else 'glibc defaults'}")
    print()
    print(
        "| K | way | median s | images/s | user s | system s | minor faults | mean L_K |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    ratios = {}
    for k in args.samples:
        stats = {name: [] for name in ways}
        results = {}
        for fn in ways.values():  # warm-up: lazy initialisation, the heap's first growth
            fn(min(k, 100))
        label = k or f"ELBO, batch {args.elbo_batch}"
        for repeat in range(args.repeats):
            order = list(ways.items())
            for name, fn in order if repeat % 2 == 0 else order[::-1]:  # A B, B A, ...
                results[name], used = _timed(lambda fn=fn, k=k: fn(k), seed=repeat)
                stats[name].append(used)
        gap = (results["library"] - results["by hand"]).abs().max().item()
        if gap > 1e-3:
            raise SystemExit(f"K = {k}: library and hand-written differ by {gap:.2e} nats")
        for name, used in stats.items():
            med = {key: statistics.median(u[key] for u in used) for key in used[0]}
            print(
                f"| {label} | {name} | {med['seconds']:.3f} | {x.shape[0] / med['seconds']:.1f} "
                f"| {med['user']:.2f} | {med['system']:.2f} | {med['faults']:.0f} "
                f"| {results[name][0 if args.elbo_batch else slice(None)].mean().item():.3f} |"
            )
        pairs = zip(stats["library"], stats["by hand"], strict=True)
        ratios[label] = statistics.median(a["seconds"] / b["seconds"] for a, b in pairs)
    print()
    for label, ratio in ratios.items():
        print(f"K = {label}: library / hand-written = {ratio:.3f} (median of per-repeat ratios)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
