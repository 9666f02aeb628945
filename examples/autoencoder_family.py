"""The lectures' path, measured: autoencoder -> sparse AE -> denoising AE -> VAE, on one problem.

    python examples/autoencoder_family.py --epochs 10 --out runs/family
    python examples/autoencoder_family.py --epochs 1 --limit-train 2000 --out runs/family-quick

Trains six models with the same data, seed, networks (784-400-50 MLPs), Bernoulli likelihood
and SVI, each an ordinary run folder under ``--out`` (every one of them also works with
``pyro-vae evaluate``, ``plot`` and ``train --resume``):

    ae, sparse-high (rho 0.02), sparse-low (rho 0.2), denoising-ae, vae, denoising-vae

then evaluates every model on the test set (reconstruction at the code, from clean and from
corrupted inputs with the fixed test corruption; for the VAEs also the ELBO and L_K) and writes
``family.md`` (the table, printed too) and three figures that put the models side by side:

- ``family-random-codes.png``: codes drawn from a Gaussian fitted to the test codes, decoded by
  the AE and by the VAE (and prior samples of the VAE);
- ``family-sparsity.png``: reconstructions at high and at low sparseness, and each unit's mean
  activation against its target;
- ``family-denoising.png``: clean, corrupted, and reconstructed by the plain AE, the denoising
  AE, the VAE and the denoising VAE.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import TrainConfig, fit, heldout_metrics, load_data, load_vae  # noqa: E402
from pyro_vae.cli.main import OneLineParser, positive_int, run_cli, spec_type  # noqa: E402
from pyro_vae.evaluation.figures import image_grid, random_code_images  # noqa: E402
from pyro_vae.evaluation.metrics import corrupt_fixed  # noqa: E402
from pyro_vae.models.corruption import parse_corruption  # noqa: E402

SPARSE_HIGH, SPARSE_LOW = 0.02, 0.2  # targets; the penalty's weight is the library default


def variants(corrupt: str) -> dict[str, dict]:
    """Run name -> the flags that make the model (the rest is shared)."""
    return {
        "ae": dict(model="ae"),
        "sparse-high": dict(model="ae", sparsity=SPARSE_HIGH),
        "sparse-low": dict(model="ae", sparsity=SPARSE_LOW),
        "denoising-ae": dict(model="ae", corrupt=corrupt),
        "vae": dict(model="vae"),
        "denoising-vae": dict(model="vae", corrupt=corrupt),
    }


def row(name: str, metrics: dict, seconds: float) -> str:
    def cell(key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(metrics[key]) if key in metrics else "n/a"

    cells = [
        name,
        cell("recon_at_code"),
        cell("sq_error"),
        cell("corrupted_recon_at_code"),
        cell("corrupted_sq_error"),
        cell("elbo"),
        cell("iwae"),
        cell("active_units", "{}"),
        cell("mean_activation_avg", "{:.3f}"),
        f"{seconds:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | log p(x\\|z=code) | squared error | from corrupted: log p(x\\|z=code(x~)) "
    "| from corrupted: squared error | ELBO | L_K | active units | mean activation "
    "| s/epoch (median) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def save_rows(rows: list[tuple[str, torch.Tensor]], path: Path, title: str) -> None:
    """One labelled strip of images per row."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.05 * len(rows) + 0.4))
    for ax, (label, images) in zip(axes, rows, strict=True):
        ax.imshow(image_grid(images.cpu(), 1, (28, 28)).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def random_codes(model, test: torch.Tensor, n: int = 12) -> torch.Tensor:
    """Decoded draws from N(mean, covariance) of the model's test codes (seeded)."""
    torch.manual_seed(0)
    return random_code_images(model, test, n)


def figures(models: dict, test: torch.Tensor, corrupt: str, out: Path) -> list[Path]:
    x = test[:12]
    paths = [out / f"family-{n}.png" for n in ("random-codes", "sparsity", "denoising")]
    torch.manual_seed(1)
    samples = models["vae"].sample(12)
    save_rows(
        [
            (
                "AE: random codes ~ N(mean, cov of the AE's test codes), decoded",
                random_codes(models["ae"], test),
            ),
            (
                "VAE: random codes ~ N(mean, cov of the VAE's test codes), decoded",
                random_codes(models["vae"], test),
            ),
            ("VAE: z ~ p(z) = N(0, I), decoded", samples),
        ],
        paths[0],
        "decoding codes away from the data",
    )
    save_rows(
        [
            ("test images", x),
            (
                f"sparse AE, high sparseness (rho = {SPARSE_HIGH})",
                models["sparse-high"].reconstruct(x),
            ),
            (
                f"sparse AE, low sparseness (rho = {SPARSE_LOW})",
                models["sparse-low"].reconstruct(x),
            ),
            ("AE, no sparsity penalty", models["ae"].reconstruct(x)),
        ],
        paths[1],
        "reconstructions at high and at low sparseness",
    )
    noisy = corrupt_fixed(x, corrupt)
    save_rows(
        [("clean", x), (f"corrupted ({corrupt})", noisy.clamp(0, 1))]
        + [
            (f"{name} from the corrupted row", models[name].reconstruct(noisy))
            for name in ("ae", "denoising-ae", "vae", "denoising-vae")
        ],
        paths[2],
        "denoising: reconstructions from corrupted inputs",
    )
    return paths


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shared = dict(
        epochs=args.epochs,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        data_dir=args.data_dir,
        quiet=args.quiet,
        seed=args.seed,
    )
    models, lines, seconds = {}, [HEADER], {}
    for name, flags in variants(args.corrupt).items():
        if not args.quiet:
            print(f"== {name} ==", flush=True)
        run = fit(TrainConfig(out=str(out / name), overwrite=True, **shared, **flags))
        seconds[name] = statistics.median(row["seconds"] for row in run.read_metrics())
        models[name] = load_vae(str(run.path))[0]
    data = load_data("mnist", args.data_dir, "dynamic", 0, args.limit_train, args.limit_test, 0)
    results = {}
    for name, model in models.items():
        torch.manual_seed(0)
        results[name] = heldout_metrics(model, data.test, args.iw_samples, corrupt=args.corrupt)
        lines.append(row(name, results[name], seconds[name]))
    table = "\n".join(lines)
    (out / "family.md").write_text(table + "\n")
    (out / "family.json").write_text(json.dumps({"seconds": seconds, **results}, indent=2))
    print(table)
    with torch.no_grad():
        for path in figures(models, data.test, args.corrupt, out):
            print(path)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="autoencoder_family.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--limit-train", type=positive_int, default=None)
    parser.add_argument("--limit-test", type=positive_int, default=None)
    parser.add_argument("--iw-samples", type=positive_int, default=1000, metavar="K")
    parser.add_argument(
        "--corrupt",
        type=spec_type(parse_corruption),
        default="mask:0.5",
        help="the denoising models' corruption",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/family")
    parser.add_argument("--quiet", action="store_true")
    return run_cli(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
