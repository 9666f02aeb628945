"""Regenerate the documentation's figures from the examples, and write docs/gallery.md.

Every figure in ``docs/figures/`` is made by one of the commands in :data:`GALLERY`, exactly as
the page that shows it documents, and copied here by this script, never by hand:

    python docs/make_gallery.py                      # every entry: hours on 2 CPU cores
    python docs/make_gallery.py --only svi-default   # one entry
    python docs/make_gallery.py --page-only          # rewrite docs/gallery.md only
    python docs/make_gallery.py --only NAME --reuse --runs DIR   # figures of DIR/NAME, made before
    python docs/make_gallery.py --quick --only svi-default --docs /tmp/docs   # seconds: a check

``--quick`` appends each step's small settings (1 epoch, a few hundred images) and writes into
``--docs`` (not the real docs); ``--runs`` is where the run folders go (default ``runs/gallery``).
Needs the data the examples need (``PYRO_VAE_DATA_DIR`` or a download).
"""

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
QUICK = "--epochs 1 --limit-train 500 --limit-test 100"


@dataclass
class Step:
    """One command; ``{run}`` is the entry's run folder. ``quick``: flags added by --quick."""

    command: str
    quick: str = QUICK


@dataclass
class Entry:
    name: str
    title: str
    page: str  # the page that discusses the figures
    steps: list[Step]
    figures: dict[str, str]  # file in the run folder -> name in docs/figures


GALLERY = [
    Entry(
        "svi-default",
        "The default VAE, trained by SVI",
        "training.md",
        [Step("python examples/train_svi.py --out {run} --quiet")],
        {
            f"figures/{name}.png": f"svi-default-{name}.png"
            for name in ("reconstructions", "samples", "curves", "manifold", "latent")
        }
        | {"figures/interpolation.png": "svi-default-interpolation.png"},
    ),
    Entry(
        "svi-vs-em",
        "SVI against variational EM",
        "svi-vs-em.md",
        [
            Step(
                "pyro-vae compare --algo svi em --e-rule fixed converge aggressive --epochs 5 "
                "--limit-train 10000 --val-size 1000 --out {run} --quiet",
                "--epochs 1 --limit-train 600 --val-size 100 --limit-test 100",
            )
        ],
        {"comparison.png": "svi-vs-em.png"},
    ),
    Entry(
        "kw-comparison",
        "SVI, variational EM and Monte Carlo EM (Kingma and Welling's setting)",
        "mcem.md",
        [Step("python examples/compare_methods.py --out {run} --quiet", "--epochs 1")],
        {"comparison.png": "kw-comparison.png"},
    ),
    Entry(
        "burda2016-vae-k1",
        "Burda et al. (2016), their recipe: 3280 epochs (about 2.6 hours)",
        "benchmarks.md",
        [Step("pyro-vae train --config recipes/burda2016-vae-k1.toml --out {run} --quiet")],
        {"figures/curves.png": "burda2016-curves.png"},
    ),
    Entry(
        "family",
        "The autoencoder family",
        "autoencoders.md",
        [
            Step(
                "python examples/autoencoder_family.py --epochs 10 --out {run}",
                "--epochs 1 --limit-train 500 --limit-test 100 --iw-samples 5",
            )
        ],
        {f"family-{n}.png": f"family-{n}.png" for n in ("random-codes", "sparsity", "denoising")},
    ),
    Entry(
        "vqvae",
        "VQ-VAE on MNIST and priors over its codes",
        "vqvae.md",
        [
            Step("pyro-vae train --model vqvae --arch conv --epochs 15 --eval-every 5 --out {run}"),
            Step(
                "pyro-vae fit-prior {run} --prior uniform categorical transformer --epochs 15",
                "--epochs 1",
            ),
        ],
        {
            "figures/reconstructions.png": "vqvae-reconstructions.png",
            "figures/codebook_usage.png": "vqvae-codebook-usage.png",
            "priors/uniform/samples.png": "vqvae-samples-uniform.png",
            "priors/categorical/samples.png": "vqvae-samples-categorical.png",
            "priors/transformer/samples.png": "vqvae-samples-transformer.png",
        },
    ),
    Entry(
        "vqvae-fashion",
        "VQ-VAE on Fashion-MNIST grey levels",
        "vqvae.md",
        [
            Step(
                "pyro-vae train --model vqvae --arch conv --epochs 10 --dataset fashion-mnist "
                "--binarize none --likelihood continuous-bernoulli --out {run}"
            ),
            Step("pyro-vae fit-prior {run} --prior transformer --epochs 10", "--epochs 1"),
        ],
        {"priors/transformer/samples.png": "vqvae-fashion-samples-transformer.png"},
    ),
    Entry(
        "tdvae",
        "TD-VAE rollouts on moving MNIST",
        "tdvae.md",
        [
            Step(
                "pyro-vae train --model tdvae --dataset moving-mnist --z-dim 8 --hidden-dims 128 "
                "--max-jump 4 --time-pairs 8 --limit-train 5000 --limit-test 200 --epochs 40 "
                "--eval-every 10 --out {run}"
            ),
            Step(
                "python examples/tdvae_rollouts.py {run} --limit 200",
                "--vae-epochs 1 --vae-sequences 200 --limit 20",
            ),
        ],
        {"figures/rollouts.png": "tdvae-rollouts.png"},
    ),
]


def argv(step: Step, run: Path, quick: bool) -> list[str]:
    words = step.command.format(run=run).split()
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "pyro-vae":
        words[:1] = [sys.executable, "-m", "pyro_vae"]
    return words + (step.quick.split() if quick else [])


def regenerate(entry: Entry, runs: Path, docs: Path, quick: bool, reuse: bool = False) -> None:
    """Run the entry's commands in a fresh run folder, then copy its figures into docs;
    ``reuse``: take the figures of the run folder these commands already made."""
    run = runs / entry.name
    if not reuse:
        shutil.rmtree(run, ignore_errors=True)
        for step in entry.steps:
            print("$", " ".join(argv(step, run, quick)), flush=True)
            subprocess.run(argv(step, run, quick), cwd=ROOT, check=True)
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    for source, target in entry.figures.items():
        shutil.copyfile(run / source, docs / "figures" / target)


def gallery_page() -> str:
    """docs/gallery.md: each entry's commands beside the figures they make."""
    lines = [
        "# Gallery",
        "",
        "Every figure of this documentation, next to the commands that make it. They are",
        "regenerated, never copied by hand, by one command (`docs/make_gallery.py`, which runs",
        "each entry in a fresh run folder and copies its figures into `docs/figures/`):",
        "",
        "```bash",
        "python docs/make_gallery.py                     # all entries (hours on 2 CPU cores)",
        "python docs/make_gallery.py --only svi-default  # one entry",
        "```",
        "",
    ]
    for entry in GALLERY:
        lines += [f"## {entry.title}", "", f"Discussed in [{entry.page}]({entry.page}).", ""]
        lines += ["```bash"] + [s.command.format(run=f"runs/{entry.name}") for s in entry.steps]
        lines += ["```", ""]
        lines += [f"![{name}](figures/{name})" for name in entry.figures.values()] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[e.name for e in GALLERY], default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a check")
    parser.add_argument("--page-only", action="store_true", help="only rewrite gallery.md")
    parser.add_argument("--docs", type=Path, default=DOCS, help="docs folder to write into")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "gallery")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="copy the figures of run folders RUNS/NAME that these commands already made "
        "(a multi-hour run trained earlier) instead of running them again",
    )
    args = parser.parse_args()
    if args.quick and args.docs.resolve() == DOCS:
        parser.error("--quick figures must not replace the real ones: give --docs DIR")
    if not args.page_only:
        for entry in GALLERY:
            if args.only is None or entry.name in args.only:
                regenerate(entry, args.runs, args.docs, args.quick, args.reuse)
    (args.docs / "gallery.md").write_text(gallery_page())


if __name__ == "__main__":
    main()
