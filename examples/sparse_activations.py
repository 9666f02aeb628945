"""Does ``--sparsity RHO`` reach its target at the default weight? Measured against the plain AE.

    python examples/sparse_activations.py --epochs 5 --out runs/sparse
    python examples/sparse_activations.py --epochs 2 --limit-train 5000 --out runs/sparse-quick

Trains the plain autoencoder and one sparse autoencoder per ``--rho`` (at ``--sparsity-weight``,
the default unless given), all with the same data, seed, 784-400-50 MLPs, Bernoulli likelihood
and SVI, each an ordinary run folder under ``--out``. Then reports every code unit's mean
activation on the test images under the same squashing, the sigmoid: the sparse AE's codes are
sigmoid units, and the plain AE's linear codes are passed through a sigmoid to be compared with
them. Writes ``activations.md`` (the table, printed too): per model the mean, least and largest
unit mean activation, the largest distance of a unit from its target, and the reconstruction
term log p(x | f(x)) on the test images.
"""

from pathlib import Path

import torch

from pyro_vae import TrainConfig, elbo_terms, fit, load_data, load_vae
from pyro_vae.cli.main import OneLineParser, positive_float, positive_int, run_cli
from pyro_vae.models.autoencoders import SPARSITY_WEIGHT

HEADER = (
    "| model | weight | unit mean activations: avg | min | max | largest distance from target "
    "| log p(x given f(x)), nats |\n|---|---:|---:|---:|---:|---:|---:|"
)


@torch.no_grad()
def activation_row(name: str, run: Path, test: torch.Tensor) -> str:
    """One table row: each unit's mean sigmoid activation over ``test`` for the run's model."""
    model, config = load_vae(str(run))
    codes = model.codes(test)
    if config.sparsity is None:  # the plain AE: the same squashing as the sparse units'
        codes = torch.sigmoid(codes)
    means = codes.mean(0)
    recon = elbo_terms(model, test)["recon"].mean().item()
    target = config.sparsity
    distance = f"{(means - target).abs().max().item():.3f}" if target is not None else "n/a"
    weight = f"{config.sparsity_weight:g}" if target is not None else "n/a"
    return (
        f"| {name} | {weight} | {means.mean().item():.3f} | {means.min().item():.3f} | "
        f"{means.max().item():.3f} | {distance} | {recon:.2f} |"
    )


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--limit-train", type=positive_int, default=None)
    parser.add_argument("--rho", type=positive_float, nargs="+", default=[0.02, 0.05, 0.2])
    parser.add_argument("--sparsity-weight", type=positive_float, default=SPARSITY_WEIGHT)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/sparse")
    args = parser.parse_args()

    def run() -> None:
        out = Path(args.out)
        shared = dict(
            data_dir=args.data_dir,
            epochs=args.epochs,
            limit_train=args.limit_train,
            model="ae",
            eval_every=0,
            quiet=True,
        )
        runs = {"ae": TrainConfig(out=str(out / "ae"), **shared)}
        for rho in args.rho:
            runs[f"sparse rho={rho:g}"] = TrainConfig(
                out=str(out / f"sparse-{rho:g}"),
                sparsity=rho,
                sparsity_weight=args.sparsity_weight,
                **shared,
            )
        paths = {name: fit(config).path for name, config in runs.items()}
        test = load_data("mnist", args.data_dir).test
        rows = [activation_row(name, path, test) for name, path in paths.items()]
        table = "\n".join([HEADER, *rows])
        (out / "activations.md").write_text(table + "\n")
        print(table)

    raise SystemExit(run_cli(run))


if __name__ == "__main__":
    main()
