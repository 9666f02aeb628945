"""Are a model's samples recognisable digits? Inception score and mean top probability of the
project's own MNIST classifier (:mod:`pyro_vae.evaluation.sample_quality`) for real test
images, each run's reconstructions of them, and its samples (a VQ-VAE: one row per fitted
prior, see ``pyro-vae fit-prior``):

    python examples/sample_quality.py runs/vqvae-mnist docs/results/burda2016-vae-k1

Images are the means of p(x | z) (what ``pyro-vae plot`` shows); real test images are given
both as MNIST stores them (grey) and binarized once, as the runs' test sets are.
``--temperatures 1 0.8`` samples each fitted code prior at each temperature (logits divided by
T: T < 1 trades variety for sharper grids; the bounds are those of T = 1); ``--priors NAME...``
scores only those fitted priors. Prints a table;
``--out FILE`` also writes it as JSON.
"""

import argparse
import json
from pathlib import Path

import torch

from pyro_vae import load_run
from pyro_vae.cli.main import run_cli
from pyro_vae.data.images import load_images
from pyro_vae.errors import UserError
from pyro_vae.evaluation.digits import digit_classifier
from pyro_vae.evaluation.sample_quality import classifier_scores
from pyro_vae.runs.code_prior import fitted_priors, with_fitted_prior
from pyro_vae.runs.files import write_file
from pyro_vae.runs.folder import Run


def run_rows(
    run_dir: str,
    count: int,
    temperatures: tuple[float, ...] = (1.0,),
    only: tuple[str, ...] | None = None,
) -> tuple[list[tuple[str, torch.Tensor]], str | None]:
    """(label, images) of one run: its reconstructions of the first ``count`` test images and
    ``count`` samples per prior (a fitted code prior: per temperature of ``temperatures``;
    ``only``: these fitted priors alone); and the data folder it was trained on."""
    model, data, epoch = load_run(run_dir)
    name = f"{Path(run_dir).name} ({type(model).__name__}, epoch {epoch})"
    if data.frame_dim != 784:
        raise UserError(f"{run_dir} is not a model of 28x28 images")
    rows = [(f"{name}: reconstructions", model.reconstruct(data.test[:count]))]
    priors = fitted_priors(run_dir)
    if only is not None and priors:
        if missing := [name for name in only if name not in priors]:
            raise UserError(
                f"{run_dir} has no fitted prior {missing[0]!r} (fitted: {', '.join(priors)})"
            )
        priors = list(only)
    for prior in priors or [None]:
        if prior is not None:
            model = with_fitted_prior(model, run_dir, prior)
        if not hasattr(model, "sample"):
            print(f"{name} draws no samples (no sample method): reconstructions only")
            break
        for temperature in temperatures if prior else (1.0,):
            torch.manual_seed(0)
            label = f"{name}: samples" + (f", {prior} prior" if prior else "")
            options = {"temperature": temperature} if temperature != 1 else {}
            if options:
                label += f", temperature {temperature:g}"
            batches = [model.sample(500, **options) for _ in range(-(-count // 500))]
            rows.append((label, torch.cat(batches)))
    return [(label, x[:count]) for label, x in rows], Run(run_dir).data_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--count", type=int, default=10000, help="images per row")
    parser.add_argument("--data-dir", default=None, help="MNIST folder for real images")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="T",
        help="sample each fitted code prior at these temperatures (logits / T; default 1)",
    )
    parser.add_argument(
        "--priors",
        nargs="+",
        default=None,
        metavar="NAME",
        help="score these fitted code priors of a VQ-VAE run only (default: every one)",
    )
    parser.add_argument("--out", default=None, help="also write the scores as JSON here")
    args = parser.parse_args()

    def job() -> None:
        if args.count < 1:
            raise UserError("--count must be positive")
        if not all(0 < t < float("inf") for t in args.temperatures):
            raise UserError(f"--temperatures must be positive numbers, got {args.temperatures}")
        model_rows, data_dir = [], args.data_dir
        for run_dir in args.run_dirs:
            only = tuple(args.priors) if args.priors else None
            rows, recorded = run_rows(run_dir, args.count, tuple(args.temperatures), only)
            model_rows += rows
            data_dir = data_dir or recorded
        real = load_images("mnist", train=False, data_dir=data_dir)[: args.count]
        torch.manual_seed(0)
        rows = [("real test images (grey)", real), ("real, binarized", torch.bernoulli(real))]
        rows += model_rows
        classifier = digit_classifier(data_dir)
        result = {label: classifier_scores(classifier, x) for label, x in rows}
        print("| images | inception score | mean max probability | digits named |")
        print("|---|---:|---:|---:|")
        for label, r in result.items():
            print(
                f"| {label} | {r['inception_score']:.2f} | {r['max_probability']:.3f} "
                f"| {r['digits_named']} |"
            )
        if args.out:
            write_file(args.out, json.dumps(result, indent=2) + "\n")

    raise SystemExit(run_cli(job))


if __name__ == "__main__":
    main()
