"""What the library's two divergence checks cost per SVI step: epochs of `SVITrainer` with
`gradient_step` as shipped (a non-finite loss or gradient norm stops the run before any
parameter moves; each check reads a value back from the device) against the same step without
the checks, interleaved, medians after a first warm-up round.

    python benchmarks/bench_checks.py --device cuda --batch-size 128

On a GPU a read-back waits for every kernel launched before it, so the CPU cannot run ahead of
the GPU; on the CPU the checks cost little. Needs MNIST (PYRO_VAE_DATA_DIR or --data-dir).
"""

import argparse
import statistics
import time

import torch

from pyro_vae import SVITrainer, build_vae, load_data, make_objective
from pyro_vae.infer import svi


def unchecked_step(loss, batch_size, params, optimizers, clip_norm=None):
    """``gradient_step`` without its two checks (and without clipping)."""
    for p in params:
        p.grad = None
    (loss / batch_size).backward(inputs=params)
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit-train", type=int, default=59392)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    x = load_data("mnist", args.data_dir, "static", limit_train=args.limit_train).train
    x = x.to(args.device)
    torch.manual_seed(0)
    vae = build_vae(x.shape[1], z_dim=50, hidden_dims=(400,)).to(args.device)
    trainer = SVITrainer(vae, make_objective("trace"), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    steps = {"as shipped": svi.gradient_step, "no checks": unchecked_step}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            svi.gradient_step = step
            synchronize(args.device)
            start = time.perf_counter()
            loss = trainer.train_epoch(x, args.batch_size, generator, check=False)
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1} {name}: {seconds[name][-1]:.3f} s (loss {loss:.2f})", flush=True)
    svi.gradient_step = steps["as shipped"]
    n_steps = -(-x.shape[0] // args.batch_size)
    for name, s in seconds.items():
        median = statistics.median(s[1:] if len(s) > 1 else s)
        print(f"{name}: {median:.3f} s/epoch, {1000 * median / n_steps:.2f} ms/step")


if __name__ == "__main__":
    main()
