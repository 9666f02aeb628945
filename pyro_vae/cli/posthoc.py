"""Work on a finished run folder: ``pyro-vae evaluate`` and ``pyro-vae plot``.

Both rebuild the trained model (any ``--model``) from ``checkpoint.pt`` and the test set exactly
as training did (:func:`pyro_vae.data.images.load_data` with the run's own configuration: same
data set, subsample and fixed test binarization), so their numbers and figures describe the
run's own test set.
"""

import json
import os
import platform
import time
from pathlib import Path

import torch

from pyro_vae.errors import UserError
from pyro_vae.evaluation.figures import write_figures
from pyro_vae.evaluation.metrics import heldout_metrics
from pyro_vae.models.base import LatentModel
from pyro_vae.models.corruption import parse_corruption
from pyro_vae.runs.files import WriteFailed, check_writable, write_file
from pyro_vae.runs.fit import load_run
from pyro_vae.runs.folder import Run, library_versions, load_tensors

__all__ = ["evaluate_run", "eval_table", "plot_run", "fitted_prior_samples"]


def evaluate_run(
    run_dir: str | Path,
    iw_samples: int = 5000,
    limit: int | None = None,
    data_dir: str | None = None,
    corrupt: str | None = None,
    checkpoint: str = "last",
    progress: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict:
    """Evaluate a run on (the first ``limit`` images of) its test set; writes ``eval.json``
    (``eval-best.json`` for ``checkpoint="best"``, the best validation ELBO's ``best.pt``).

    The metrics are those that apply to the run's model; ``not_applicable`` in the result says
    why the others are left out. ``corrupt`` (a ``--corrupt`` spec) adds the reconstruction from
    corrupted test images, for any model (a denoising run reports its own corruption anyway).
    ``progress``: a progress bar with the time left while the log-likelihood is estimated.
    ``out``: the folder to write the result into instead of the run folder (which is then only
    read: a run on a read-only mount, or someone else's). ``device``: where the model and the
    test images go for the estimates (``cuda``: the GPU).
    """
    if corrupt is not None:
        parse_corruption(corrupt)
    if iw_samples <= 0:
        raise UserError(f"--iw-samples must be positive (got {iw_samples})")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive (got {limit})")
    path = results_folder(run_dir, out, "eval.json") / (
        "eval.json" if checkpoint == "last" else f"eval-{checkpoint}.json"
    )
    vae, data, epoch = load_run(run_dir, data_dir, checkpoint, device)
    x = (data.test[:limit] if limit else data.test).to(device)
    start = time.perf_counter()
    metrics = heldout_metrics(vae, x, iw_samples, corrupt, progress)
    result = {
        "run": str(run_dir),
        "model": type(vae).__name__,
        "checkpoint": checkpoint,
        "epoch": epoch,
        "num_test": int(x.shape[0]),
        "iw_samples": iw_samples,
        "z_dim": int(vae.codes(x[:1]).shape[-1]),
        **metrics,
        "seconds": time.perf_counter() - start,
        "machine": machine_description(device),
        "versions": library_versions(),
    }
    write_file(path, json.dumps(result, indent=2) + "\n")
    return result


def results_folder(run_dir: str | Path, out: str | Path | None, what: str) -> Path:
    """Where a command on a run writes ``what``: ``out`` if given, else the run folder; checked
    before any work, so a folder that cannot be written is one line, not a lost result."""
    folder = Path(out) if out is not None else Path(run_dir)
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    try:
        check_writable(folder)
    except WriteFailed as exc:
        if out is not None:
            raise
        raise exc.explained(
            f"reading a run needs no write access: give --out DIR to write {what} elsewhere"
        ) from None
    return folder


def machine_description(device: str = "cpu") -> str:
    """CPU model, core count and torch's thread count (and the GPU's name when ``device`` is
    ``cuda``), for quoting wall times."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    described = f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if device == "cuda":
        described += f", GPU {torch.cuda.get_device_name()}"
    return described


def eval_table(result: dict) -> str:
    """The printed summary of :func:`evaluate_run`: the numbers it has, and a line for each
    metric left out."""
    k = result["iw_samples"]
    rows = [
        ("iwae", f"log p(x) ~ L_{k}", "{iwae:.2f} +- {iwae_sem:.2f} nats/datum"),
        ("elbo", "ELBO", "{elbo:.2f} nats/datum"),
        ("recon", "  recon", "{recon:.2f}"),
        ("kl", "  KL", "{kl:.2f}"),
        ("recon_at_code", "log p(x|z=code)", "{recon_at_code:.2f} nats/datum"),
        ("sq_error", "squared error", "{sq_error:.2f} per image"),
        ("active_units", "active units", "{active_units} of {z_dim}"),
        ("mutual_info", "mutual info", "{mutual_info:.2f} nats"),
        (
            "rollout_bce_mean",
            "rollouts",
            "cross-entropy {rollout_bce_mean:.2f} nats/frame over horizons 1-{horizon} "
            "(repeat last frame: {repeat_last_bce_mean:.2f}); direction right over the rollout "
            "in {rollout_direction:.1%}; displacement off by {displacement_error_mean:.2f} px",
        ),
        (
            "codes_used",
            "codebook",
            "{codes_used} of {codebook_size} codes used, perplexity {perplexity:.1f}",
        ),
        (
            "sparsity_kl",
            "mean activation",
            "{mean_activation_avg:.3f} (target "
            "{sparsity_target:g}, units {mean_activation_min:.3f}-{mean_activation_max:.3f})",
        ),
        (
            "corrupted_recon_at_code",
            "from corrupted",
            "log p(x|z=code(x~)) "
            "{corrupted_recon_at_code:.2f}, squared error {corrupted_sq_error:.2f} ({corruption})",
        ),
    ]
    lines = [
        ("run folder", result["run"]),
        (
            "test images",
            f"{result['num_test']}  ({result.get('checkpoint', 'last')} checkpoint, "
            f"epoch {result['epoch']})",
        ),
    ]
    values = result | {"horizon": len(result.get("rollout_bce", ()))}
    lines += [(name, fmt.format(**values)) for key, name, fmt in rows if key in result]
    lines += [(f"{key} n/a", why) for key, why in result.get("not_applicable", {}).items()]
    lines.append(("seconds", f"{result['seconds']:.0f}"))
    width = max(len(name) for name, _ in lines)  # the n/a names are the longest
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def plot_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    checkpoint: str = "last",
    out: str | Path | None = None,
    device: str = "cpu",
    temperature: float = 1.0,
) -> list[Path]:
    """Regenerate every figure of a run into its ``figures/`` folder (``figures-best/`` for the
    ``best.pt`` checkpoint), or into ``out/figures[-best]`` when ``out`` is given; the model
    runs on ``device``; a VQ-VAE's fitted priors are sampled at ``temperature``."""
    name = "figures" if checkpoint == "last" else f"figures-{checkpoint}"
    folder = results_folder(run_dir, out, f"{name}/") / name
    vae, data, _ = load_run(run_dir, data_dir, checkpoint, device)
    run = Run(run_dir)
    paths = write_figures(
        vae, data.test, run.read_metrics(), folder, data.image_shape, data.test_labels
    )
    return paths + fitted_prior_samples(vae, run_dir, folder, data.image_shape, temperature)


def fitted_prior_samples(
    vae: LatentModel,
    run_dir: str | Path,
    folder: Path,
    image_shape: tuple[int, int],
    temperature: float = 1.0,
) -> list[Path]:
    """``samples-NAME.png`` for every prior fitted to a VQ-VAE run (priors of your own, which
    need their module, are left out), ``samples-NAME-tT.png`` at a ``temperature`` T != 1;
    [] for any other run."""
    from pyro_vae.models.vqvae import VQVAE
    from pyro_vae.runs.code_prior import fitted_priors, plot_prior_samples, with_fitted_prior

    if not isinstance(vae, VQVAE):
        return []
    paths, uniform = [], vae.prior
    for name in fitted_priors(run_dir):
        if load_tensors(Path(run_dir) / "priors" / name / "prior.pt")["spec"] == "custom":
            continue
        with_fitted_prior(vae, run_dir, name)
        path = folder / (
            f"samples-{name}.png" if temperature == 1 else f"samples-{name}-t{temperature:g}.png"
        )
        plot_prior_samples(vae, path, image_shape, temperature)
        paths.append(path)
    vae.prior = uniform
    return paths
