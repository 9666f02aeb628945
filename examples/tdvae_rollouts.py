"""TD-VAE rollouts on moving MNIST against two baselines, as in the paper's Figure 3 setting.

Train a TD-VAE first, then score its rollouts on the run's test sequences:

    pyro-vae train --model tdvae --dataset moving-mnist --z-dim 8 --hidden-dims 128 \\
        --limit-train 20000 --epochs 20 --out runs/tdvae
    python examples/tdvae_rollouts.py runs/tdvae

The baselines: repeating the last observed frame, the oracle (the last observed frame moved the
true way), and a model with no belief and no dynamics, a VAE trained here on single frames of
the same training sequences (``--vae-epochs``), predicting its reconstruction of the last
observed frame. Prints, per horizon 1..10, the cross-entropy of the rollouts' mean frame and of
the baselines, the digit's displacement against the truth and the fraction of frames in which
an MNIST classifier (trained once and cached, :mod:`pyro_vae.evaluation.digits`) still names
the digit; then the direction over the whole rollout and issue 34's goals
(:func:`~pyro_vae.evaluation.rollouts.rollout_goals`). Writes ``rollouts.json`` and the figure
``figures/rollouts.png`` into the run folder.
"""

import argparse
import json
from pathlib import Path

import torch

from pyro_vae import SVITrainer, build_vae, load_run, make_objective
from pyro_vae.cli.main import run_cli
from pyro_vae.data.sequences import frames
from pyro_vae.errors import UserError
from pyro_vae.evaluation.digits import digit_classifier
from pyro_vae.evaluation.figures import plot_rollouts
from pyro_vae.evaluation.rollouts import rollout_goals, rollout_metrics
from pyro_vae.runs.files import check_writable, write_file
from pyro_vae.runs.folder import Run


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
    parser.add_argument(
        "--classifier-cache", default=None, help="folder of the cached MNIST classifier"
    )
    args = parser.parse_args()

    def job() -> None:
        if min(args.vae_epochs, args.vae_sequences, args.limit, args.samples) < 1:
            raise UserError("--vae-epochs, --vae-sequences, --limit and --samples must be positive")
        model, data, epoch = load_run(args.run_dir, args.data_dir)
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
        data_dir = args.data_dir or Run(args.run_dir).data_dir()
        classifier = digit_classifier(data_dir, args.classifier_cache)
        result = rollout_metrics(
            model,
            test,
            samples=args.samples,
            frame_model=vae,
            classifier=classifier,
            labels=data.test_labels[: args.limit],
            image_shape=data.image_shape,
        )
        result["goals"] = rollout_goals(result)
        result["epoch"] = epoch
        result["frame_vae"] = {"epochs": args.vae_epochs, "sequences": args.vae_sequences}
        write_file(Path(args.run_dir) / "rollouts.json", json.dumps(result, indent=2) + "\n")
        print(f"{len(test)} test sequences, {args.samples} rollouts each")
        print(
            "| horizon | TD-VAE | repeat last | frame VAE | oracle | displacement (truth) "
            "| digit named: rollout (truth) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for h in range(len(result["rollout_bce"])):
            row = [result[k][h] for k in ("rollout_bce", "repeat_last_bce", "frame_model_bce")]
            row.append(result["oracle_bce"][h])
            print(
                f"| {h + 1} | "
                + " | ".join(f"{v:.1f}" for v in row)
                + f" | {result['displacement'][h]:.2f} ({result['displacement_truth'][h]:.0f})"
                + f" | {result['identity_rollout'][h]:.1%} ({result['identity_truth'][h]:.1%}) |"
            )
        jumps = ", ".join(
            f"frame {h}: {b:.1f} nats, {m:.2f} px"
            for h, b, m in zip(
                result["jumpy_horizons"],
                result["jumpy_bce"],
                result["jumpy_displacement"],
                strict=True,
            )
        )
        print(f"jumpy rollout (one transition per {result['jump']} frames): {jumps}")
        print(
            f"direction right over the whole rollout: {result['rollout_direction']:.1%} "
            f"(no motion: {result['rollout_still']:.1%})"
        )
        met = result["goals"]
        print("goals met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            plot_rollouts(model, test, figures / "rollouts.png", data.image_shape)

    raise SystemExit(run_cli(job))


if __name__ == "__main__":
    main()
