"""A run folder: ``config.json``, ``metrics.csv``, ``checkpoint.pt`` and ``figures/``; with a
validation set also ``best.pt``, the checkpoint of the epoch with the best validation ELBO.

Files are written through :mod:`pyro_vae.runs.files`, so that an interruption, a full disk or a
machine crash never corrupts what is already there: the checkpoints and the config are written
to a temporary file, fsynced and renamed into place; metrics rows are appended and fsynced one at
a time, never as half a line. A damaged ``metrics.csv`` is reported with the line at fault, and
repaired (damaged lines dropped) when a run resumes from its checkpoint.

Every write stays inside the folder: ``pyro-vae train`` refuses a run file or folder it writes
that is a symbolic link (:meth:`Run.refuse_links`), before any work; run files are read only
when they are regular files of a plausible size (:func:`~pyro_vae.runs.files.read_file`).

A run folder is data, not code. ``checkpoint.pt`` holds only tensors, numbers, strings, lists,
tuples and dicts, and is read with ``torch.load(..., weights_only=True)``: a file that carries
any other Python object (whose unpickling could run code) is refused with one line that names
the objects, and nothing of it runs. Checkpoints of format version 1 stored numpy's RNG state
as a numpy array; they load under the same restricted reader with numpy arrays of plain numbers
allowed (no code runs either), and the next save writes version 2.
"""

import csv
import errno
import io
import json
import math
import pickle
import platform
import time
from pathlib import Path

import torch

from pyro_vae.data.images import recorded_data_dir
from pyro_vae.errors import UserError
from pyro_vae.runs.files import (
    WriteFailed,
    append_line,
    open_regular,
    read_file,
    write_file,
    write_torch,
)

__all__ = ["Run", "CHECKPOINTS", "library_versions", "default_run_dir", "load_tensors"]

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

    @staticmethod
    def check_free(path: str | Path, overwrite: bool = False) -> None:
        """Refuse ``path`` as a new run folder if it is a file, or a folder holding files (unless
        ``overwrite``): checked before a run loads its data, and again when it makes the folder."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a folder")
        if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()) and not overwrite:
            raise UserError(
                f"--out {path} already holds files; choose another folder, pass --overwrite to "
                f"replace them, or continue the run with --resume {path}"
            )

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "Run":
        """Make a new run folder; an existing non-empty one is refused unless ``overwrite``."""
        path = Path(path)
        cls.check_free(path, overwrite)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteFailed(path, exc) from None  # one line: the folder and the cause
        return cls(path)

    #: What ``pyro-vae train`` writes in a run folder: never through a symbolic link.
    WRITTEN = (
        "config.json",
        "metrics.csv",
        "checkpoint.pt",
        "best.pt",
        ".lock",
        "figures",
        "tensorboard",
    )

    def refuse_links(self) -> None:
        """A :class:`~pyro_vae.runs.files.WriteFailed` naming the first of :attr:`WRITTEN` that
        is a symbolic link: training writes a run's files inside its folder, never through a
        link (a folder from elsewhere could point one at a file of the user's)."""
        for name in self.WRITTEN:
            path = self.path / name
            if path.is_symlink():
                raise WriteFailed(path, OSError(errno.ELOOP, "a link", str(path)))

    def clear(self) -> None:
        """Forget an overwritten run's metrics and best checkpoint (under the folder's lock)."""
        self.metrics_path.unlink(missing_ok=True)
        self.best_path.unlink(missing_ok=True)  # an overwritten run's best is not this run's

    def write_config(self, config: dict) -> None:
        record = {**config, "versions": library_versions()}
        write_file(self.config_path, json.dumps(record, indent=2) + "\n")

    def read_config(self) -> dict:
        return json.loads(read_file(self.config_path, "config.json"))

    def data_dir(self) -> str | None:
        """The data folder config.json records, where it exists on this machine
        (:func:`~pyro_vae.data.images.recorded_data_dir`); None when config.json is missing,
        damaged or records none, so that ``PYRO_VAE_DATA_DIR`` or the download cache applies.
        A config.json that is not a regular file, or too large, is refused as every read of
        a run file is (:class:`UserError`)."""
        try:
            recorded = self.read_config().get("data_dir")
        except (OSError, ValueError, AttributeError):
            return None
        return recorded_data_dir(recorded if isinstance(recorded, str) else None)

    def log(self, row: dict) -> None:
        """Append one row to ``metrics.csv`` (the header is written with the first row).

        The row goes out in one fsynced append (:func:`~pyro_vae.runs.files.append_line`), so
        neither an interruption nor a full disk leaves half a line.
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
        if not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow({k: _fmt(v) for k, v in row.items()})
        append_line(self.metrics_path, buffer.getvalue())

    def read_metrics(self) -> list[dict[str, float]]:
        """The rows of ``metrics.csv`` as numbers (blank cells: NaN); a damaged line is a
        :class:`UserError` naming it."""
        _, rows, damaged = self._metrics_lines(self._metrics_text())
        if damaged:
            line, why = damaged[0]
            raise UserError(
                f"{self.metrics_path} is damaged: line {line} {why}; "
                f"pyro-vae train --resume {self.path} repairs it from the checkpoint"
            )
        return [row for _, row in rows]

    def _metrics_text(self) -> str:
        """``metrics.csv`` ("" when missing); a special or oversized file is a UserError."""
        try:
            return read_file(self.metrics_path, "metrics.csv").decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _metrics_lines(self, text: str) -> tuple[list[str], list[tuple[list[str], dict]], list]:
        """The header, (cells, numbers) of each row of ``text`` that reads as numbers, and
        (line number, what is wrong) for the other lines."""
        if not text:
            return [], [], []
        lines = list(csv.reader(io.StringIO(text)))
        if not lines or not lines[0] or lines[0][0] != "epoch":
            raise UserError(f"{self.metrics_path} is damaged: its first line is not the header")
        header, rows, damaged = lines[0], [], []
        for number, cells in enumerate(lines[1:], start=2):
            if len(cells) != len(header):
                damaged.append((number, f"has {len(cells)} cells, not {len(header)}"))
                continue
            try:
                numbers = [float(v) if v != "" else math.nan for v in cells]
                rows.append((cells, dict(zip(header, numbers, strict=True))))
            except ValueError:
                damaged.append((number, "holds a cell that is not a number"))
        return header, rows, damaged

    def repair_metrics(self, last_epoch: int) -> list[str]:
        """Keep the rows up to ``last_epoch`` (a resumed run's checkpoint), one per epoch in
        order, dropping later rows and damaged lines; returns what was dropped, in words."""
        text = self._metrics_text()
        try:
            header, rows, damaged = self._metrics_lines(text)
        except UserError:  # the header itself is damaged: no row can be read against it
            write_file(self.metrics_path, "")
            return [f"its header was damaged, so the rows of epochs 1-{last_epoch} are lost"]
        if not header:
            return []
        kept: dict[int, list[str]] = {}
        for cells, row in rows:
            epoch = row["epoch"]
            if epoch == int(epoch) and 1 <= epoch <= last_epoch:
                kept.setdefault(int(epoch), cells)
        if not damaged and list(kept.values()) == [cells for cells, _ in rows]:
            return []
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header] + [kept[epoch] for epoch in sorted(kept)])
        write_file(self.metrics_path, buffer.getvalue())
        notes = [f"line {line} {why}" for line, why in damaged]
        missing = sorted(set(range(1, last_epoch + 1)) - set(kept))
        if missing:
            notes.append(f"no row for epoch(s) {_ranges(missing)}")
        return notes

    def save_checkpoint(self, state: dict, which: str = "last") -> None:
        """Write ``checkpoint.pt`` (``which="last"``) or ``best.pt`` (``"best"``), whole or not
        at all (:class:`~pyro_vae.runs.files.WriteFailed`: the previous file is intact)."""
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
        write_torch(self.path / CHECKPOINTS[which], payload)

    def load_checkpoint(self, which: str = "last") -> dict:
        """The contents of ``checkpoint.pt`` (``which="last"``) or ``best.pt`` (``"best"``); a
        missing, corrupt, foreign or unsafe file is a :class:`UserError`, and nothing in it runs
        (module docstring)."""
        path = self.path / CHECKPOINTS[which]
        if which == "best" and not path.exists() and self.checkpoint_path.exists():
            raise UserError(
                f"{self.path} has no best checkpoint: best.pt is kept by runs trained with "
                "--val-size N (the best validation ELBO); use --checkpoint last"
            )
        if not path.exists():
            raise UserError(f"no checkpoint at {path}")
        state = load_tensors(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path} is not a pyro-vae checkpoint")
        return state


def load_tensors(path: Path) -> object:
    """``torch.load`` of a regular file with ``weights_only=True`` (tensors and plain data; the
    numpy arrays of version-1 checkpoints): a file that is not a regular file, carries other
    Python objects, or is damaged is a :class:`UserError`, and nothing of it runs."""
    with open_regular(path) as f:
        try:
            with torch.serialization.safe_globals(_NUMPY_ARRAYS):
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UserError(_refusal(path, exc)) from None
        except Exception as exc:  # torch raises many types for truncated or foreign files
            raise UserError(_damaged(path, exc)) from None


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
        return _damaged(path, exc)
    return (
        f"refusing checkpoint {path}: it holds Python objects other than tensors and plain data "
        f"({', '.join(names[:3])}), and loading those could run code; a pyro-vae checkpoint "
        "never does (see docs/reliability.md, loading runs from elsewhere)"
    )


def _damaged(path: Path, exc: Exception) -> str:
    return (
        f"checkpoint {path} is damaged (truncated or not a checkpoint: {type(exc).__name__}); "
        "nothing can be loaded from it"
    )


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    spans, start = [], numbers[0]
    for a, b in zip(numbers, numbers[1:] + [None], strict=True):
        if b != a + 1:
            spans.append(f"{start}-{a}" if a > start else str(a))
            start = b
    return ", ".join(spans)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
