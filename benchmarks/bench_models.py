"""Time per training step of each model, and of a VQ-VAE's stage-2 priors, side by side.

Times SVI steps (Trace_ELBO, Adam, batch 128) of the convolutional VAE, the VQ-VAE (stage 1)
and the TD-VAE on moving digits, and maximum-likelihood steps of the VQ-VAE's code priors
(stage 2) on 7 x 7 grids of 512 codes, interleaved in rounds in one process; prints the median
milliseconds per step and the implied seconds per epoch of 60000 data points.

    OMP_NUM_THREADS=2 python benchmarks/bench_models.py                  # 5 rounds of 20 steps
    python benchmarks/bench_models.py --rounds 1 --steps 1 --threads 1   # seconds, for CI

Synthetic binary data: a step's time does not depend on the values (the stage-2 encoding of
the training set, one encoder pass per epoch, is not included).
"""

import argparse
import statistics
import time

import torch

from pyro_vae import SVITrainer, TrainConfig, make_objective
from pyro_vae.models import MODELS
from pyro_vae.models.code_priors import make_code_prior

BATCH, EPOCH = 128, 60000


def training_step(config: TrainConfig, data_dim: int):
    """A function taking one SVI step of the model ``config`` describes."""
    model = MODELS[config.model].from_config(config.validate(), data_dim, (28, 28))
    trainer = SVITrainer(model, make_objective("trace"))
    x = torch.bernoulli(torch.full((BATCH, data_dim), 0.15))
    return lambda: trainer.step(x)


def prior_step(spec: str):
    """A function taking one Adam step of a code prior on random 7 x 7 grids of 512 codes."""
    prior = make_code_prior(spec, 512, 49)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
    grids = torch.randint(512, (BATCH, 49))

    def step() -> None:
        loss = -prior().log_prob(grids).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    td = dict(model="tdvae", dataset="moving-mnist", z_dim=8, hidden_dims=(128,), max_jump=4)
    cases = {
        "VAE conv (z 50), SVI step": training_step(TrainConfig(arch="conv"), 784),
        "VQ-VAE conv (K 512, D 64), stage 1 step": training_step(
            TrainConfig(model="vqvae", arch="conv"), 784
        ),
        "VQ-VAE stage 2, categorical prior step": prior_step("categorical"),
        "VQ-VAE stage 2, transformer prior step": prior_step("transformer"),
        "TD-VAE (z 8, width 128, T 20), SVI step": training_step(TrainConfig(**td), 20 * 784),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for step in cases.values():
        step()  # warm-up
    for _ in range(args.rounds):
        for name, step in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}")
    print("| step | ms per step (median) | s per epoch of 60000 |")
    print("|---|---:|---:|")
    for name, values in times.items():
        ms = 1000 * statistics.median(values)
        print(f"| {name} | {ms:.1f} | {ms * EPOCH / BATCH / 1000:.1f} |")


if __name__ == "__main__":
    main()
