"""Stage 2 of a VQ-VAE: ``pyro-vae fit-prior RUN --prior SPEC``.

Stage 1 (``pyro-vae train --model vqvae``) trains encoder, codebook and decoder under the
uniform code prior. This fits another prior over the code grids k(x) of the training set by
maximum likelihood, leaving the rest of the run untouched: in closed form when the prior has one
(``fit_exact``: the categorical prior's smoothed frequencies; one pass), else by Adam on
-log p(k) over minibatches of grids. With dynamic binarization every epoch encodes a fresh
binarization of the training images, as stage 1 saw them (draw e of seed s is the same for every
prior, so priors fitted in one command share each draw's codes); with a fixed draw (``static``
or ``none``) the training set is encoded once for all epochs and all priors. ``--train-codes
grey`` fits to the codes of the training images' grey levels instead (encoded once): a binarized
draw's codes carry the draw's noise, which a prior fitted to them reproduces in its samples.
Adam's learning rate follows ``--lr-schedule`` (constant, cosine or burda over the epochs).

A fit by gradient steps writes ``checkpoint.pt`` (the prior, Adam's state, the rows so far)
after every epoch; the same command again continues from it (a killed fit loses at most an
epoch; more ``--epochs`` extend a finished fit), as long as the spec, batch size, learning rate,
seed and stage-1 checkpoint are the ones it was made with (otherwise the fit starts afresh).
Every printed line starts with the prior's name, and a bar (on stderr, off with ``quiet``)
shows the progress inside an epoch.

The bound on the held-out log-likelihood under the fitted prior is the VQ-VAE's own ELBO with the
prior swapped in, log p(x | z_q(x)) + log p(k(x)) (:func:`pyro_vae.evaluation.elbo.evaluate_elbo`
on the run's test set), so the numbers are those the Pyro programs define.

Everything goes into the run folder, under ``priors/NAME/``: ``prior.pt`` (the spec and the
fitted state), ``metrics.csv`` (per epoch: train and test code NLL, seconds), ``eval.json``
(the test bound and code NLL) and ``samples.png`` (ancestral samples, decoded); each prior is
saved as soon as it is fitted. :func:`prior_table` lists the uniform prior and every fitted one;
``load_vae(run, prior="NAME")`` loads the VQ-VAE with a fitted prior in place
(:func:`with_fitted_prior`).
"""

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.devices import forked_rng
from pyro_vae.errors import UserError
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.figures import plot_samples
from pyro_vae.infer.schedules import FIXED_SCHEDULES, EpochSchedule
from pyro_vae.models.base import LatentModel
from pyro_vae.models.code_priors import UniformCodePrior, check_code_prior_spec, make_code_prior
from pyro_vae.models.vqvae import VQVAE
from pyro_vae.plugins import absolute_file_spec, from_run_folder
from pyro_vae.runs.files import check_writable, read_file, write_file, write_torch
from pyro_vae.runs.fit import load_run, load_vae
from pyro_vae.runs.folder import load_tensors

__all__ = [
    "fit_code_prior",
    "fit_code_priors",
    "load_code_prior",
    "with_fitted_prior",
    "fitted_priors",
    "prior_table",
    "code_grids",
    "plot_prior_samples",
    "TrainingCodes",
    "TRAIN_CODES",
]


@torch.no_grad()
def code_grids(
    model: VQVAE, x: torch.Tensor, batch_size: int = 1000, progress: str | None = None
) -> torch.Tensor:
    """k(x) for every row of ``x``, shape (N, G); ``progress``: a bar with this label."""
    was_training = model.training
    model.eval()
    starts = tqdm(
        range(0, len(x), batch_size), desc=progress, disable=progress is None, leave=False
    )
    grids = [model.code_indices(x[i : i + batch_size]) for i in starts]
    model.train(was_training)
    return torch.cat(grids)


class TrainingCodes:
    """The code grids of the training set, encoded once per binarization draw.

    Draw ``e`` (0, 1, ...) of a dynamically binarized training set is made from a generator
    seeded by (``seed``, e), so it is the same for every prior fitted with that seed, and the
    last draw's grids are kept for the next prior; with a fixed draw (static binarization or
    none) the training set is encoded once. ``grey``: the codes of the training images' grey
    levels instead of binarized draws (one fixed draw; a dynamically binarized run keeps them).
    """

    def __init__(
        self, model: VQVAE, data, device: torch.device, seed: int, grey: bool = False
    ) -> None:
        self.model, self.data, self.device, self.seed = model, data, device, seed
        self.grey = grey
        self._cached: tuple[int, torch.Tensor] | None = None
        self.encodings = 0  # how many times the training set was encoded (for tests)

    def grids(self, draw: int, label: str | None = None) -> torch.Tensor:
        """The grids of draw ``draw`` (any draw when the draw is fixed)."""
        key = draw if self.data.binarize == "dynamic" and not self.grey else 0
        if self._cached is None or self._cached[0] != key:
            if self.grey:
                x = self.data.train
            else:
                x = self.data.train_epoch(torch.Generator().manual_seed(_seed(self.seed, key)))
            x = x.to(self.device)
            self._cached = (key, code_grids(self.model, x, progress=label))
            self.encodings += 1
        return self._cached[1]


#: What a checkpoint made before a setting existed was made with.
CHECKPOINT_DEFAULTS = {"lr_schedule": "constant", "train_codes": "binarized"}
#: Whose codes a prior is fitted to: the training images as stage 1 saw them, or their grey
#: levels (codes without the binarization's noise; see :class:`TrainingCodes`).
TRAIN_CODES = ("binarized", "grey")


def _seed(seed: int, index: int) -> int:
    """The seed of draw or shuffle ``index`` of a fit seeded by ``seed``."""
    return seed * 1_000_003 + index


@torch.no_grad()
def _code_nll(prior: nn.Module, grids: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean -log p(k) over ``grids``, in nats per grid."""
    total = sum(
        -prior().log_prob(grids[i : i + batch_size]).sum().item()
        for i in range(0, len(grids), batch_size)
    )
    return total / len(grids)


def fit_code_prior(
    run_dir: str | Path,
    spec: str = "transformer",
    prior: nn.Module | None = None,
    name: str | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    data_dir: str | None = None,
    quiet: bool = False,
    device: str = "cpu",
    lr_schedule: str = "constant",
    train_codes: str = "binarized",
) -> dict:
    """Fit a code prior to the VQ-VAE of ``run_dir``; returns its ``eval.json`` record.

    ``spec``: a built-in prior (:mod:`pyro_vae.models.code_priors`); or ``prior``: a module of
    your own that follows the code-prior protocol, saved under ``name`` (default ``custom``).
    ``device``: where the VQ-VAE and the prior run (``cuda``: the GPU); ``lr_schedule``:
    ``constant``, ``cosine`` or ``burda`` over the epochs (:mod:`pyro_vae.infer.schedules`);
    ``train_codes``: ``binarized`` (the training images as stage 1 saw them) or ``grey`` (the
    codes of their grey levels, without binarization noise; saved as ``NAME-grey``).
    """
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, quiet=quiet)
    settings |= {"lr_schedule": lr_schedule, "train_codes": train_codes}
    return fit_code_priors(run_dir, [spec], data_dir, device, prior, name, **settings)[0]


def fit_code_priors(
    run_dir: str | Path,
    specs: list[str],
    data_dir: str | None = None,
    device: str = "cpu",
    prior: nn.Module | None = None,
    name: str | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    quiet: bool = False,
    lr_schedule: str = "constant",
    train_codes: str = "binarized",
) -> list[dict]:
    """Fit the priors of ``specs`` one after the other to the VQ-VAE of ``run_dir`` (loaded
    once; the training codes shared, see :class:`TrainingCodes`); each is saved when done.
    ``prior``: one module of your own instead of specs; ``name``: the folder of a single prior
    (default: from its spec, ``custom`` for a module); the rest as :func:`fit_code_prior`."""
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, quiet=quiet)
    settings |= {"lr_schedule": lr_schedule, "train_codes": train_codes}
    # plateau needs a validation ELBO: a fit has none
    for flag, choices in (("lr_schedule", FIXED_SCHEDULES), ("train_codes", TRAIN_CODES)):
        if settings[flag] not in choices:
            option = "--" + flag.replace("_", "-")
            raise UserError(f"{option} must be one of {', '.join(choices)}")
    for flag in ("epochs", "batch_size", "lr"):
        if not settings[flag] > 0:
            option = "--" + flag.replace("_", "-")
            raise UserError(f"{option} must be positive (got {settings[flag]})")
    if name is not None and prior is None and len(specs) != 1:
        raise UserError("a name is for one prior; several are saved under their specs' names")
    suffix = "-grey" if train_codes == "grey" else ""
    if prior is None:
        jobs = [_job(spec, None, name, suffix) for spec in specs]
    else:
        jobs = [_job("custom", prior, name, suffix)]
    model, data, stage1_epoch = load_run(run_dir, data_dir, device=device)
    if not isinstance(model, VQVAE):
        raise UserError(f"{run_dir} holds a {type(model).__name__}; fit-prior needs a VQ-VAE run")
    if train_codes == "grey" and data.binarize == "static":
        raise UserError(
            f"{run_dir} was trained on one fixed binarization (--binarize static) and keeps no "
            "grey training images: --train-codes grey needs a dynamic or none run"
        )
    device = next(model.parameters()).device
    test_grids = code_grids(model, data.test.to(device))
    codes = TrainingCodes(model, data, device, settings["seed"], grey=train_codes == "grey")
    results = []
    for spec, module, folder_name in jobs:
        torch.manual_seed(settings["seed"])
        if module is None:
            module = make_code_prior(spec, model.codebook.size, model.num_positions)
        fit = _PriorFit(run_dir, spec, folder_name, module.to(device), stage1_epoch, settings)
        results.append(fit.run(model, data, codes, test_grids))
    return results


def _job(spec: str, prior: nn.Module | None, name: str | None, suffix: str = "") -> tuple:
    """(spec, module or None, folder name) of one prior to fit, its name checked; ``suffix``
    goes after a name made from the spec (``-grey``: fitted to the grey images' codes)."""
    if prior is None:
        spec = absolute_file_spec(spec)  # prior.pt records it: reloads from any folder
        check_code_prior_spec(spec)  # a bad spec is a UserError before anything is loaded
        name = name or _folder_name(spec) + suffix
    else:
        name = name or "custom" + suffix
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(
            f"a prior's name must be a plain folder name (letters, digits, ._-): {name!r}"
        )
    return spec, prior, name


def _folder_name(spec: str) -> str:
    """``transformer:3`` -> ``transformer-3``; ``/a/b/my.py:PixelCNN(layers=5)`` ->
    ``my.py-PixelCNN-layers-5``: the folder under ``priors/`` a spec's fit is saved in."""
    return re.sub(r"[^\w.-]+", "-", spec.rpartition("/")[2]).strip("-.") or "prior"


class _PriorFit:
    """One prior's fit into ``RUN/priors/NAME/``: training (resumable), then the files."""

    def __init__(self, run_dir, spec, name, prior, stage1_epoch, settings) -> None:
        self.run_dir, self.spec, self.name, self.prior = run_dir, spec, name, prior
        self.settings, self.stage1_epoch = settings, stage1_epoch
        self.folder = Path(run_dir) / "priors" / name
        self.checkpoint = self.folder / "checkpoint.pt"
        self.key = {
            "spec": spec,
            "batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "seed": settings["seed"],
            "stage1_epoch": stage1_epoch,
            "lr_schedule": settings["lr_schedule"],
            "train_codes": settings["train_codes"],
        }

    def say(self, text: str) -> None:
        if not self.settings["quiet"]:
            print(f"{self.name}: {text}", flush=True)

    def run(self, model: VQVAE, data, codes: TrainingCodes, test_grids: torch.Tensor) -> dict:
        check_writable(self.folder, root=self.run_dir)  # before training; never through a link
        if hasattr(self.prior, "fit_exact") or not list(self.prior.parameters()):
            rows = [self._one_pass(codes, test_grids)]
        else:
            rows = self._gradient_fit(codes, test_grids)
        return self._save(model, data, rows)

    def _one_pass(self, codes: TrainingCodes, test_grids: torch.Tensor) -> dict:
        """A closed-form fit (``fit_exact``) or nothing to fit: one pass over draw 0's grids
        (none for the uniform prior, whose -log p(k) is G log K for every grid)."""
        start = time.perf_counter()
        if isinstance(self.prior, UniformCodePrior):
            grids = test_grids[:1]
        else:
            grids = codes.grids(0, self._label("encoding the training images"))
        if hasattr(self.prior, "fit_exact"):
            self.prior.fit_exact(grids)
        row = {"epoch": 1, "train_code_nll": _code_nll(self.prior, grids)}
        row["seconds"] = time.perf_counter() - start
        row["test_code_nll"] = _code_nll(self.prior, test_grids)
        self._report(row, 1)
        return row

    def _label(self, text: str) -> str | None:
        return None if self.settings["quiet"] else f"{self.name}: {text}"

    def _gradient_fit(self, codes: TrainingCodes, test_grids: torch.Tensor) -> list[dict]:
        """Adam on the mean -log p(k) over minibatches of training grids, one row per epoch,
        checkpointed after each epoch and resumed from the checkpoint when it matches."""
        s = self.settings
        optimizer = torch.optim.Adam(self.prior.parameters(), lr=s["lr"])
        schedule = EpochSchedule(s["lr_schedule"], [optimizer], s["epochs"])
        rows = self._resume(optimizer, schedule)
        device = test_grids.device
        for epoch in range(len(rows) + 1, s["epochs"] + 1):
            start = time.perf_counter()
            grids = codes.grids(epoch - 1, self._label(f"epoch {epoch}: encoding"))
            order = torch.randperm(
                len(grids), generator=torch.Generator().manual_seed(_seed(s["seed"], epoch))
            )
            batches = tqdm(
                order.split(s["batch_size"]),
                desc=self._label(f"epoch {epoch}/{s['epochs']}"),
                disable=s["quiet"],
                leave=False,
                unit="batch",
            )
            total = 0.0
            for index in batches:
                loss = -self.prior().log_prob(grids[index.to(device)]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            if not math.isfinite(total):
                raise UserError(
                    f"{self.name}: the prior's loss became {total} in epoch {epoch}; "
                    "try a lower --lr"
                )
            row = {"epoch": epoch, "train_code_nll": total / len(grids)}
            row["seconds"] = time.perf_counter() - start
            row["test_code_nll"] = _code_nll(self.prior, test_grids)
            row["lr"] = schedule.lr()
            schedule.step()
            rows.append(row)
            state = {**self.key, "state": self.prior.state_dict(), "rows": rows}
            state |= {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            write_torch(self.checkpoint, state)
            write_file(self.folder / "metrics.csv", _csv(rows))
            self._report(row, s["epochs"])
        return rows

    def _resume(self, optimizer: torch.optim.Optimizer, schedule: EpochSchedule) -> list[dict]:
        """The rows of the epochs ``checkpoint.pt`` holds (its prior, Adam's and the schedule's
        state loaded), or [] when there is none or it was made with other settings."""
        if not self.checkpoint.is_file():
            return []
        saved = load_tensors(self.checkpoint)
        if not isinstance(saved, dict) or any(
            saved.get(k, CHECKPOINT_DEFAULTS.get(k)) != v for k, v in self.key.items()
        ):
            self.say(f"{self.checkpoint} was made with other settings; fitting afresh")
            return []
        try:
            rows = [dict(row) for row in saved["rows"]]
            if len(rows) > self.settings["epochs"]:
                self.say(
                    f"{self.checkpoint} holds more than {self.settings['epochs']} epochs; "
                    "fitting afresh"
                )
                return []
            self.prior.load_state_dict(saved["state"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved.get("schedule", []))
        except Exception as exc:  # a damaged or foreign file: say so, keep it, fit nothing
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"{self.checkpoint} cannot be resumed ({type(exc).__name__}: {first_line}); "
                "move it away to fit afresh"
            ) from None
        self.say(f"resuming after epoch {len(rows)} from {self.checkpoint}")
        return rows

    def _report(self, row: dict, epochs: int) -> None:
        self.say(
            f"epoch {row['epoch']:3d}/{epochs}  train -log p(k) {row['train_code_nll']:8.2f}  "
            f"test {row['test_code_nll']:8.2f} nats  {row['seconds']:6.1f}s"
        )

    def _save(self, model: VQVAE, data, rows: list[dict]) -> dict:
        """prior.pt, metrics.csv, eval.json and samples.png; returns the eval.json record."""
        write_file(self.folder / "metrics.csv", _csv(rows))
        state = {"spec": self.spec, "state": self.prior.state_dict(), "epochs": len(rows)}
        write_torch(self.folder / "prior.pt", state)
        uniform = model.prior
        model.prior = self.prior
        device = _device(model)
        bound = evaluate_elbo(model, data.test.to(device))
        result = {
            "prior": self.name,
            "spec": self.spec,
            "run": str(self.run_dir),
            "stage1_epoch": self.stage1_epoch,
            "train_codes": self.settings["train_codes"],
            "epochs": len(rows),
            "num_test": int(data.test.shape[0]),
            "test_bound": bound["elbo"],
            "test_recon": bound["recon"],
            "test_code_nll": bound["kl"],
            "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
        }
        write_file(self.folder / "eval.json", json.dumps(result, indent=2) + "\n")
        plot_prior_samples(model, self.folder / "samples.png", data.image_shape)
        model.prior = uniform
        self.say(f"test bound {bound['elbo']:.2f} nats; saved in {self.folder}")
        return result


def _device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters."""
    return next(model.parameters()).device


def plot_prior_samples(model: VQVAE, path: Path, image_shape, temperature: float = 1.0) -> None:
    """Samples of ``model`` under its current prior (at ``temperature``), decoded, drawn with
    the fixed seed 0."""
    with forked_rng(_device(model)):
        torch.manual_seed(0)
        was_training = model.training
        plot_samples(model.eval(), path, image_shape, temperature=temperature)
        model.train(was_training)


def _csv(rows: list[dict]) -> str:
    """``rows`` as CSV; a column that older rows lack (a resumed fit's ``lr``) is left empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def load_code_prior(
    run_dir: str | Path, name: str, prior: nn.Module | None = None, model: VQVAE | None = None
) -> nn.Module:
    """A prior fitted by :func:`fit_code_prior` (``priors/NAME/prior.pt``), rebuilt from its
    spec; a prior of your own (spec ``custom``) needs a fresh instance as ``prior``. ``model``:
    the run's VQ-VAE if already loaded (it gives the numbers of codes and positions)."""
    path = Path(run_dir) / "priors" / name / "prior.pt"
    if not path.exists():
        fitted = ", ".join(fitted_priors(run_dir)) or "none"
        raise UserError(
            f"no fitted prior {name!r} in {run_dir} (fitted: {fitted}; fit it with "
            f"pyro-vae fit-prior {run_dir} --prior SPEC)"
        )
    state = load_tensors(path)
    if model is None:
        model, _ = load_vae(str(run_dir))
    if prior is None:
        if state["spec"] == "custom":
            raise UserError(f"prior {name!r} is of your own: pass a fresh instance as prior=")
        try:
            with from_run_folder(run_dir):
                prior = make_code_prior(state["spec"], model.codebook.size, model.num_positions)
        except UserError as exc:  # a plugin that no longer imports
            raise UserError(f"cannot rebuild prior {name!r} of {run_dir}: {exc}") from None
    prior.load_state_dict(state["state"])
    return prior


def fitted_priors(run_dir: str | Path) -> list[str]:
    """The names of the priors fitted to the run (folders under ``priors/`` with a prior.pt)."""
    return sorted(p.parent.name for p in (Path(run_dir) / "priors").glob("*/prior.pt"))


def with_fitted_prior(model: LatentModel, run_dir: str | Path, name: str) -> VQVAE:
    """``model`` (the VQ-VAE of ``run_dir``) with the prior fitted as ``name`` in place, on the
    model's device: what ``load_vae(run, prior=NAME)`` returns."""
    if not isinstance(model, VQVAE):
        raise UserError(
            f"{run_dir} holds a {type(model).__name__}; a fitted prior's name applies to a "
            "VQ-VAE run (pass a prior module for a VAE trained with one of your own)"
        )
    prior = load_code_prior(run_dir, name, model=model)
    model.prior = prior.to(_device(model)).eval()
    return model


def prior_table(run_dir: str | Path) -> str:
    """Markdown table of the test bound under every prior fitted to the run (``uniform``
    included when fitted: it has nothing to learn, one pass scores it)."""
    rows = []
    for path in sorted((Path(run_dir) / "priors").glob("*/eval.json")):
        r = json.loads(read_file(path, "eval.json"))
        rows.append((r["prior"], r["test_code_nll"], r["test_recon"], r["test_bound"]))
    lines = [
        "| prior | -log p(k) | log p(x given z_q) | bound on log p(x) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {c:.2f} | {rc:.2f} | {b:.2f} |" for n, c, rc, b in rows]
    return "\n".join(lines)
