"""What durable run files cost: the fsyncs of an epoch's writes against the epoch itself.

Every epoch of a run appends a metrics row and rewrites checkpoint.pt (and best.pt when the
validation ELBO improves) through :mod:`pyro_vae.runs.files`, which fsyncs each file and its
folder. This times those writes of the default model (784-400-50, Adam state included: the
checkpoint of ``python examples/train_svi.py``) with and without the fsyncs, interleaved, and one
training epoch of the same model on 60,000 images, and prints the fsyncs' share of the epoch.

    python benchmarks/bench_durability.py                     # 20 rounds, a full epoch
    python benchmarks/bench_durability.py --rounds 2 --images 1000   # seconds, for CI

Images are random binary (the epoch's cost does not depend on the pixels). ``--dir`` puts the
run folder on the disk you want to measure (default: a temporary folder under ./runs).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae import SVITrainer, build_vae, make_objective
from pyro_vae.runs import files
from pyro_vae.runs.folder import Run


def epoch_writes(run: Run, state: dict, epoch: int) -> float:
    """Seconds for one epoch's writes: a metrics row and the checkpoint, then best.pt."""
    start = time.perf_counter()
    run.log({"epoch": epoch, "train_loss": 100.0, "test_elbo": -100.0, "seconds": 4.0})
    run.save_checkpoint(state)
    run.save_checkpoint(state, "best")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = build_vae(784)
    trainer = SVITrainer(vae, make_objective("trace"), lr=1e-3)
    x = torch.bernoulli(torch.full((args.images, 784), 0.13))
    start = time.perf_counter()
    trainer.train_epoch(x, batch_size=128)
    epoch = time.perf_counter() - start
    state = {"epoch": 1, "vae": vae.state_dict(), "trainer": trainer.state_dict()}
    Path(args.dir or "runs").mkdir(parents=True, exist_ok=True)
    real_fsync = os.fsync
    with tempfile.TemporaryDirectory(dir=args.dir or "runs") as folder:
        run = Run(folder)
        durable, plain = [], []
        for n in range(args.rounds):  # interleaved: the disk's mood hits both alike
            durable.append(epoch_writes(run, state, 2 * n))
            files.os.fsync = lambda fd: None
            try:
                plain.append(epoch_writes(run, state, 2 * n + 1))
            finally:
                files.os.fsync = real_fsync
        size = run.checkpoint_path.stat().st_size
    fsyncs = statistics.median(durable) - statistics.median(plain)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.images} images")
    print(f"checkpoint {size / 1e6:.1f} MB, written twice per epoch (checkpoint.pt, best.pt)")
    print("| | seconds (median) |")
    print("| --- | --- |")
    print(f"| one training epoch, batch 128 | {epoch:.2f} |")
    print(f"| an epoch's writes with fsync | {statistics.median(durable):.4f} |")
    print(f"| an epoch's writes without fsync | {statistics.median(plain):.4f} |")
    print(f"| the fsyncs | {fsyncs:.4f} ({100 * fsyncs / epoch:.2f}% of the epoch) |")


if __name__ == "__main__":
    main()
