"""TD-VAE rollouts on moving MNIST against two baselines, as in the paper's Figure 3 setting.

Train a TD-VAE first, then score its rollouts on the run's test sequences:

    pyro-vae train --model tdvae --dataset moving-mnist --z-dim 8 --hidden-dims 128 \\
        --limit-train 20000 --epochs 20 --out runs/tdvae
    python examples/tdvae_rollouts.py runs/tdvae

The baselines: repeating the last observed frame, and a model with no belief and no dynamics, a
VAE trained here on single frames of the same training sequences (``--vae-epochs``), predicting
its reconstruction of the last observed frame. Prints the cross-entropy per frame for horizons
1..10 and the fraction of rollouts moving the right way, and writes ``rollouts.json`` and the
figure ``figures/rollouts.png`` into the run folder.
"""

import argparse
import json
from pathlib import Path

import torch

from pyro_vae import SVITrainer, build_vae, load_run, make_objective
from pyro_vae.cli.main import run_cli
from pyro_vae.data.sequences import frames
from pyro_vae.errors import UserError
from pyro_vae.evaluation.figures import plot_rollouts
from pyro_vae.evaluation.rollouts import rollout_metrics
from pyro_vae.runs.files import check_writable, write_file


def frame_vae(train: torch.Tensor, frame_dim: int, epochs: int, binarize: bool):
    """A VAE (MLP 784-400-50) trained by SVI on the single frames of ``train`` sequences."""
    images = frames(train, frame_dim).reshape(-1, frame_dim)
    vae = build_vae(frame_dim)
    trainer = SVITrainer(vae, make_objective("trace"))
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        x = torch.bernoulli(images, generator=generator) if binarize else images
        loss = trainer.train_epoch(x, 128, generator, check=False)
        print(f"frame VAE epoch {epoch}: loss {loss:.2f} nats per frame", flush=True)
    return vae.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--vae-epochs", type=int, default=3)
    parser.add_argument("--vae-sequences", type=int, default=3000, help="training sequences")
    parser.add_argument("--limit", type=int, default=1000, help="test sequences scored")
    parser.add_argument("--samples", type=int, default=5, help="rollouts per sequence")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    def job() -> None:
        if min(args.vae_epochs, args.vae_sequences, args.limit, args.samples) < 1:
            raise UserError("--vae-epochs, --vae-sequences, --limit and --samples must be positive")
        model, data, _ = load_run(args.run_dir, args.data_dir)
        figures = Path(args.run_dir) / "figures"
        check_writable(figures, root=args.run_dir)  # before the work; never through a link
        if not getattr(model, "sequences", False):
            raise UserError(f"{args.run_dir} holds a {type(model).__name__}, not a sequence model")
        torch.manual_seed(0)
        vae = frame_vae(
            data.train[: args.vae_sequences],
            data.frame_dim,
            args.vae_epochs,
            data.binarize != "none",
        )
        test = data.test[: args.limit]
        result = rollout_metrics(model, test, samples=args.samples, frame_model=vae)
        write_file(Path(args.run_dir) / "rollouts.json", json.dumps(result, indent=2) + "\n")
        print("cross-entropy of each predicted frame against the true one, nats per frame:")
        print("| horizon (frames ahead) | TD-VAE rollout | repeat last frame | frame VAE |")
        print("|---:|---:|---:|---:|")
        for h, row in enumerate(
            zip(
                result["rollout_bce"],
                result["repeat_last_bce"],
                result["frame_model_bce"],
                strict=True,
            )
        ):
            print(f"| {h + 1} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
        jumps = ", ".join(f"{v:.1f}" for v in result["jumpy_bce"])
        print(f"jumpy rollout (one transition per {result['jump']} frames): {jumps} nats/frame")
        print(f"rollouts moving the true direction: {result['direction_accuracy']:.1%}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            plot_rollouts(model, test, figures / "rollouts.png", data.image_shape)

    raise SystemExit(run_cli(job))


if __name__ == "__main__":
    main()
