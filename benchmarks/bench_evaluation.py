"""Throughput of the importance-weighted log-likelihood estimate, and peak memory.

Times :func:`pyro_vae.log_likelihood` (K importance samples per image, chunked over samples and
images) on MNIST test images with the default 784-400-50 network, and prints images per second
for each K and the process's peak resident memory.

    python benchmarks/bench_evaluation.py                     # K = 1000 and 5000, 200 images
    python benchmarks/bench_evaluation.py --images 20 --samples 100   # seconds, for CI

Needs MNIST (PYRO_VAE_DATA_DIR or --data-dir); --synthetic uses random binary images instead.
The network is untrained: throughput does not depend on the weights.
"""

import argparse
import resource
import time

import torch

from pyro_vae import build_vae, load_data, log_likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        x = torch.bernoulli(torch.full((args.images, 784), 0.13))
    else:
        x = load_data("mnist", args.data_dir, limit_test=args.images).test
    torch.manual_seed(0)
    vae = build_vae(784)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {x.shape[0]} images")
    print("| K | seconds | images per second | mean L_K (untrained net) |")
    print("| --- | --- | --- | --- |")
    for k in args.samples:
        start = time.perf_counter()
        ll = log_likelihood(vae, x, num_samples=k)
        seconds = time.perf_counter() - start
        print(f"| {k} | {seconds:.1f} | {x.shape[0] / seconds:.2f} | {ll.mean().item():.1f} |")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
