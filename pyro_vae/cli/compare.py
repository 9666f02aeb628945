"""Models and algorithms on one problem: same data, seed, architecture, likelihood and number of
epochs (so the same number of decoder updates), each in its own run folder. ``--algo svi em
mcem`` compares SVI, variational EM and Monte Carlo EM; ``--model ae vae`` compares models
(every model with every algorithm given).

    out/
      svi/ em-converge/ mcem/ ...   one ordinary run folder per algorithm (and E-step rule),
      ae-svi/ ...                   prefixed by the model's name for models other than the VAE
      comparison.png                test ELBO (top) and estimated log p(x) on train and test
                                    images (bottom) against wall-clock seconds and against
                                    epochs / training examples seen
      comparison.md, comparison.csv the final numbers, one row per run

The final evaluations of the table are the functions in :data:`EVALUATIONS` (metric -> the
columns it fills and a function of the trained model and the test data that computes them once);
the columns of a metric that does not apply to a model (``model.metrics``) are left blank (n/a).
"""

import argparse
import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.errors import UserError  # noqa: E402
from pyro_vae.evaluation.figures import save_figure  # noqa: E402
from pyro_vae.evaluation.metrics import (  # noqa: E402
    active_units,
    codebook_metrics,
    log_likelihood,
    reconstruction_metrics,
)
from pyro_vae.evaluation.mutual_info import mutual_information  # noqa: E402
from pyro_vae.evaluation.rollouts import rollout_metrics  # noqa: E402
from pyro_vae.models import MODELS, LatentModel  # noqa: E402
from pyro_vae.runs.config import TrainConfig  # noqa: E402
from pyro_vae.runs.files import check_writable, write_file  # noqa: E402
from pyro_vae.runs.fit import fit, load_vae, run_data  # noqa: E402
from pyro_vae.runs.folder import Run  # noqa: E402

__all__ = [
    "EVALUATIONS",
    "IWAE_SAMPLES",
    "Comparison",
    "compare",
    "compare_configs",
    "mean_log_likelihood",
    "run_name",
]

IWAE_SAMPLES = 50


def mean_log_likelihood(
    vae: LatentModel, x: torch.Tensor, num_samples: int = IWAE_SAMPLES
) -> float:
    """Mean importance-weighted estimate L_K of log p(x) per data point (Burda et al. 2016)."""
    return log_likelihood(vae, x, num_samples=num_samples).mean().item()


# Final evaluations of each trained model on the test set: metric (as models list it in
# model.metrics) -> (the table columns it fills, function of the model and the test data
# returning those columns). Columns of a metric that does not apply are left blank (n/a).
EVALUATIONS: dict[str, tuple[tuple[str, ...], Callable[[LatentModel, torch.Tensor], dict]]] = {
    "log_likelihood": (
        (f"test_iwae_{IWAE_SAMPLES}",),
        lambda m, x: {f"test_iwae_{IWAE_SAMPLES}": mean_log_likelihood(m, x)},
    ),
    "reconstruction": (("recon_at_code", "sq_error"), reconstruction_metrics),
    "active_units": (("active_units",), lambda m, x: {"active_units": active_units(m, x)}),
    "mutual_info": (("mutual_info",), lambda m, x: {"mutual_info": mutual_information(m, x)}),
    "rollouts": (
        ("rollout_bce", "rollout_direction"),
        lambda m, x: {
            "rollout_bce": (r := rollout_metrics(m, x))["rollout_bce_mean"],
            "rollout_direction": r["rollout_direction"],
        },
    ),
    "codebook": (
        ("codes_used", "perplexity"),
        lambda m, x: {k: v for k, v in codebook_metrics(m, x).items() if k != "codebook_size"},
    ),
}


@dataclass
class Comparison:
    """What :func:`compare` wrote: the run folders, the table rows and the output files."""

    runs: dict[str, Run]
    rows: list[dict]
    markdown: str
    figure: Path
    table_csv: Path
    table_md: Path


def run_name(config: TrainConfig) -> str:
    """``svi``, ``mcem``, or ``em-<rule>`` for variational EM; prefixed by ``<model>-`` for
    models other than the VAE (``ae-svi``)."""
    name = f"em-{config.e_rule}" if config.algo == "em" else config.algo
    model = config.model.rpartition(":")[2].lower()  # a plugin's class name, not its path
    return name if config.model == "vae" else f"{model}-{name}"


def compare_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """One :class:`TrainConfig` per model, algorithm (and E-step rule for EM) from compare's
    flags."""
    fields = {
        k: v
        for k, v in vars(args).items()
        if k in TrainConfig.__dataclass_fields__ and k not in ("algo", "e_rule", "out", "model")
    }
    fields["hidden_dims"] = tuple(fields["hidden_dims"])
    configs = []
    algos = [name for names in args.algo for name in names]  # --algo svi,em mcem: lists
    models = [name for names in args.model for name in names]
    for model in dict.fromkeys(models):
        own = _fields_of_other_models(model)
        for algo in dict.fromkeys(algos):
            rules = dict.fromkeys(args.e_rule) if algo == "em" else [TrainConfig().e_rule]
            configs += [
                TrainConfig(model=model, algo=algo, e_rule=rule, **(fields | own)) for rule in rules
            ]
    return configs


def _fields_of_other_models(model: str) -> dict:
    """Defaults for the settings only other models read (``--codebook-size`` for a VQ-VAE when
    the comparison also trains a VAE): each run gets the flags that apply to its model."""
    default = TrainConfig()
    return {
        field: getattr(default, field)
        for name, cls in MODELS.items()
        if name != model
        for field in cls.own_fields
    }


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cumulative_seconds(metrics: list[dict[str, float]]) -> list[float]:
    seconds, elapsed = [], 0.0
    for m in metrics:
        elapsed += m["seconds"]
        seconds.append(elapsed)
    return seconds


def plot_comparison(
    curves: dict[str, list[dict[str, float]]], path: Path, num_train: int | None = None
) -> None:
    """Test ELBO (top) and the estimated log p(x) on training and test images (bottom, at the
    evaluated epochs) against cumulative training seconds and against epochs / training
    examples seen (``num_train`` per epoch). Without any estimate of log p(x) (models with no
    IWAE bound), the top row alone."""
    has_iwae = any(
        math.isfinite(m.get(column, math.nan))
        for metrics in curves.values()
        for m in metrics
        for column in ("train_iwae", "test_iwae")
    )
    rows = 2 if has_iwae else 1
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.75 * rows + 0.2), sharey="row", squeeze=False)
    for i, (name, metrics) in enumerate(curves.items()):
        color = f"C{i}"
        seconds = _cumulative_seconds(metrics)
        seen = [m["epoch"] * (num_train or 1) for m in metrics]
        # a model without an ELBO (the autoencoder) shows its reconstruction term, dashed
        has_elbo = any(math.isfinite(m["test_elbo"]) for m in metrics)
        column, style = ("test_elbo", "o-") if has_elbo else ("test_recon", "o--")
        label = name if has_elbo else f"{name} (log p(x|f(x)))"
        for ax, xs in zip(axes[0], (seconds, [m["epoch"] for m in metrics]), strict=True):
            points = [(x, m[column]) for x, m in zip(xs, metrics, strict=True)]
            points = [(x, y) for x, y in points if math.isfinite(y)]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, label=label)
        for column, style in (("train_iwae", "o-"), ("test_iwae", "s--")) if has_iwae else ():
            for ax, xs in zip(axes[1], (seconds, seen), strict=True):
                points = [(x, m.get(column, math.nan)) for x, m in zip(xs, metrics, strict=True)]
                points = [(x, y) for x, y in points if math.isfinite(y)]
                if points:
                    label = f"{name} {column.split('_')[0]}"
                    ax.plot(*zip(*points, strict=True), style, color=color, label=label)
    axes[0, 0].set_ylabel("test ELBO (nats per data point)\n(dashed: log p(x|f(x)), no ELBO)")
    for ax in axes[:, 0]:
        ax.set_xlabel("training seconds (wall clock)")
    axes[0, 1].set_xlabel("epoch")
    if has_iwae:
        axes[1, 0].set_ylabel("estimated log p(x) (IWAE bound)")
        axes[1, 1].set_xlabel("training examples seen" if num_train else "epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax, size in ((axes[0, 1], None), (axes[-1, 1], "small")):
        if ax.get_legend_handles_labels()[0]:  # nothing to label without held-out bounds
            ax.legend(fontsize=size)
    fig.tight_layout()
    save_figure(fig, path)


def _drop_empty_columns(rows: list[dict]) -> list[dict]:
    """The rows without the columns that are blank in every row (metrics of no model here)."""
    keep = [k for k in rows[0] if any(_cell(r[k]) != "n/a" for r in rows)]
    return [{k: r[k] for k in keep} for r in rows]


def _final_row(name: str, run: Run, test: torch.Tensor) -> dict:
    metrics = run.read_metrics()
    last = metrics[-1]
    row = {"run": name, "epochs": int(last["epoch"])}
    row.update({k: last[k] for k in ("test_elbo", "test_recon", "test_kl")})
    row.update({k: last.get(k, math.nan) for k in ("train_iwae", "test_iwae")})
    vae, _ = load_vae(str(run.path))
    torch.manual_seed(0)  # the same Monte Carlo draws for every model
    for metric, (columns, evaluate) in EVALUATIONS.items():
        row.update(evaluate(vae, test) if metric in vae.metrics else dict.fromkeys(columns))
    row["encoder_updates"] = int(last["encoder_updates"])
    row["decoder_updates"] = int(last["decoder_updates"])
    row["seconds"] = sum(m["seconds"] for m in metrics)
    return row


def compare(configs: list[TrainConfig], out: str | Path | None = None) -> Comparison:
    """Train every config into ``out/<run name>`` and write the figure and the table."""
    if not configs:
        raise UserError("nothing to compare: give at least one --algo")
    for config in configs:
        config.validate()
    base = configs[0]
    own = {field for cls in MODELS.values() for field in cls.own_fields}
    shared = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in own]
    if any(
        getattr(c, name) != getattr(base, name)
        for c in configs
        for name in shared
        if name not in ("model", "algo", "e_rule")
    ):
        raise ValueError(
            "compared configs may differ only in model, algo, e_rule and the "
            "settings of their own model"
        )
    root = Path(out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-compare")
    check_writable(root)
    runs = {}
    for config in configs:
        name = run_name(config)
        config.out = str(root / name)
        if not config.quiet:
            print(f"== {name} ==", flush=True)
        runs[name] = fit(config)
    data = run_data(base)
    rows = _drop_empty_columns([_final_row(name, run, data.test) for name, run in runs.items()])
    markdown = _markdown(rows)
    paths = root / "comparison.png", root / "comparison.csv", root / "comparison.md"
    curves = {name: run.read_metrics() for name, run in runs.items()}
    plot_comparison(curves, paths[0], len(data.train))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_file(paths[1], table.getvalue())
    write_file(paths[2], markdown + "\n")
    if any(not math.isfinite(r["test_recon"]) for r in rows):
        raise UserError(f"a compared run did not produce a finite test result; see {root}")
    return Comparison(runs, rows, markdown, *paths)
