"""A run folder: ``config.json``, ``metrics.csv``, ``checkpoint.pt`` and ``figures/``; with a
validation set also ``best.pt``, the checkpoint of the epoch with the best validation ELBO.

Files are written so that an interruption never corrupts what is already there: the checkpoint
and the config are written to a temporary file and renamed into place; metrics rows are appended
and flushed one at a time.

A run folder is data, not code. ``checkpoint.pt`` holds only tensors, numbers, strings, lists,
tuples and dicts, and is read with ``torch.load(..., weights_only=True)``: a file that carries
any other Python object (whose unpickling could run code) is refused with one line that names
the objects, and nothing of it runs. Checkpoints of format version 1 stored numpy's RNG state
as a numpy array; they load under the same restricted reader with numpy arrays of plain numbers
allowed (no code runs either), and the next save writes version 2.
"""

import csv
import io
import json
import os
import pickle
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pyro_vae.errors import UserError

__all__ = ["Run", "CHECKPOINTS", "library_versions", "default_run_dir", "atomic_write"]

CHECKPOINT_FORMAT = "pyro-vae-checkpoint"
CHECKPOINT_VERSION = 2  # 2: no numpy objects (weights_only); 1: numpy's RNG state as an array
#: ``--checkpoint`` of evaluate and plot: the file of each choice in a run folder.
CHECKPOINTS = {"last": "checkpoint.pt", "best": "best.pt"}


def library_versions() -> dict[str, str]:
    import pyro
    import torchvision

    from pyro_vae import __version__

    return {
        "pyro_vae": __version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def default_run_dir(algo: str) -> Path:
    """``runs/<date>-<time>-<algo>``, made unique if a run started in the same second."""
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{algo}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp)`` and a rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Run:
    """The files of one training run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    checkpoint_path = property(lambda self: self.path / CHECKPOINTS["last"])
    best_path = property(lambda self: self.path / CHECKPOINTS["best"])
    figures_dir = property(lambda self: self.path / "figures")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "Run":
        """Make a new run folder; an existing non-empty one is refused unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise UserError(
                f"--out {path} already holds files; choose another folder or pass --overwrite"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run folder {path}: {exc.strerror}") from None
        run = cls(path)
        run.metrics_path.unlink(missing_ok=True)
        run.best_path.unlink(missing_ok=True)  # an overwritten run's best is not this run's
        return run

    def write_config(self, config: dict) -> None:
        record = {**config, "versions": library_versions()}
        atomic_write(self.config_path, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))

    def read_config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def log(self, row: dict) -> None:
        """Append one row to ``metrics.csv`` (the header is written with the first row).

        The row goes out in a single write, so an interruption cannot leave half a line.
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        if not self.metrics_path.exists():
            writer.writeheader()
        writer.writerow({k: _fmt(v) for k, v in row.items()})
        with self.metrics_path.open("a", newline="") as f:
            f.write(buffer.getvalue())

    def read_metrics(self) -> list[dict[str, float]]:
        if not self.metrics_path.exists():
            return []
        with self.metrics_path.open(newline="") as f:
            return [
                {k: float(v) if v != "" else float("nan") for k, v in r.items()}
                for r in csv.DictReader(f)
            ]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (logged after the checkpoint a run resumes from)."""
        if not self.metrics_path.exists():
            return
        with self.metrics_path.open(newline="") as f:
            lines = list(csv.reader(f))
        keep = [lines[0]] + [row for row in lines[1:] if row and float(row[0]) <= last_epoch]

        def write(path: Path) -> None:
            with path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)

        atomic_write(self.metrics_path, write)

    def save_checkpoint(self, state: dict, which: str = "last") -> None:
        """Write ``checkpoint.pt`` (``which="last"``) or ``best.pt`` (``"best"``)."""
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
        atomic_write(self.path / CHECKPOINTS[which], lambda p: torch.save(payload, p))

    def load_checkpoint(self, which: str = "last") -> dict:
        """The contents of ``checkpoint.pt`` (``which="last"``) or ``best.pt`` (``"best"``); a
        missing, corrupt, foreign or unsafe file is a :class:`UserError`, and nothing in it runs
        (module docstring)."""
        path = self.path / CHECKPOINTS[which]
        if which == "best" and not path.is_file() and self.checkpoint_path.is_file():
            raise UserError(
                f"{self.path} has no best checkpoint: best.pt is kept by runs trained with "
                "--val-size N (the best validation ELBO); use --checkpoint last"
            )
        if not path.is_file():
            raise UserError(f"no checkpoint at {path}")
        try:
            with torch.serialization.safe_globals(_NUMPY_ARRAYS):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UserError(_refusal(path, exc)) from None
        except Exception as exc:  # torch raises many types for truncated or foreign files
            raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path} is not a pyro-vae checkpoint")
        return state


def _numpy_arrays() -> list:
    """What version-1 checkpoints need beyond plain data: numpy arrays of plain numbers (its RNG
    state). Rebuilding one calls no code of the file's choosing."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),  # written under numpy 1
        (_reconstruct, "numpy._core.multiarray._reconstruct"),  # written under numpy 2
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


_NUMPY_ARRAYS = _numpy_arrays()


def _refusal(path: Path, exc: Exception) -> str:
    """The one line that refuses a checkpoint the restricted reader will not load."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads, runs nothing
    except Exception:
        names = []
    if not names:
        return f"cannot read checkpoint {path}: {type(exc).__name__}"
    return (
        f"refusing checkpoint {path}: it holds Python objects other than tensors and plain data "
        f"({', '.join(names[:3])}), and loading those could run code; a pyro-vae checkpoint "
        "never does (see docs/reliability.md, loading runs from elsewhere)"
    )


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
