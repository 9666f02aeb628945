"""Data of your own, by path: ``--dataset path.npy | path.npz | path.pt``.

A file holds an (N, ...) array of floating-point numbers, one data point per row: ``.npy`` one
array; ``.npz`` and ``.pt`` either one array (tensor) or the arrays ``train`` and optionally
``test``. ``--test-dataset PATH`` names a test set in a file of its own; without a test set,
a tenth of the training points (at least one), drawn with ``--seed``, is held out as the test
set, and ``test_split`` in the run's config.json says how many.

Files are read as data, never as code: ``numpy.load(allow_pickle=False)`` and
``torch.load(weights_only=True)``. Every fault is one line that names the file: a missing,
empty or damaged file, an object or integer array, fewer than two dimensions, no data points,
NaN or infinite values, a test set whose points differ in shape from the training set's.

The data are kept flat, (N, D), as the library's models take them, with the shape of one point
(``point_shape``) beside them for models of your own. They are images, and figures draw them,
when each point is (H, W) or (C, H, W) with one channel, or when ``--image-shape H W`` says so.
"""

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.images import ImageData, binarize_splits
from pyro_vae.errors import UserError

__all__ = [
    "DATA_SUFFIXES",
    "is_data_file",
    "read_arrays",
    "check_array",
    "image_shape_of",
    "load_file_data",
    "split_data",
    "default_test_split",
]

DATA_SUFFIXES = (".npy", ".npz", ".pt")


def is_data_file(name: str) -> bool:
    """Whether a ``--dataset`` value names a file (by its suffix) rather than a data set."""
    return Path(name).suffix in DATA_SUFFIXES


def _damaged(path: Path, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path}: not a readable {path.suffix} file of arrays ({reason})")


def read_arrays(path: str | Path) -> dict[str, torch.Tensor]:
    """The arrays in a data file: ``{"data": x}`` for one array, else its named arrays, of
    which only ``train`` and ``test`` are allowed."""
    path = Path(path)
    if path.suffix not in DATA_SUFFIXES:
        raise UserError(f"{path}: a data file must end in {', '.join(DATA_SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty")
    try:
        if path.suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                loaded = {name: npz[name] for name in npz.files}
        else:
            loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise _damaged(path, exc) from None
    except zipfile.BadZipFile as exc:
        raise _damaged(path, exc) from None
    if isinstance(loaded, dict):
        unknown = sorted(set(loaded) - {"train", "test"})
        if unknown or "train" not in loaded:
            if len(loaded) == 1 and not ({"train", "test"} & set(loaded)):
                return {"data": _tensor(path, next(iter(loaded.values())))}
            raise UserError(
                f"{path} holds {sorted(loaded)}: a file of several arrays must name them "
                "'train' and (optionally) 'test'"
            )
        return {name: _tensor(path, value) for name, value in loaded.items()}
    return {"data": _tensor(path, loaded)}


def _tensor(path: Path, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise UserError(
                f"{path}: the array is of type {value.dtype}; data must be floating point "
                "(e.g. x.astype('float32'), images scaled to [0, 1])"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value
    raise UserError(f"{path}: holds a {type(value).__name__}, not an array or tensor")


def check_array(x: torch.Tensor, where: str) -> torch.Tensor:
    """Floating point, (N, ...) with N > 0 and no empty dimension, finite: as float32."""
    if not x.is_floating_point():
        raise UserError(
            f"{where}: the data are of type {x.dtype}; data must be floating point "
            "(e.g. x.float(), images scaled to [0, 1])"
        )
    if x.dim() < 2:
        raise UserError(
            f"{where}: the data have shape {tuple(x.shape)}; give one data point per row, "
            "(N, D) or (N, ...) (a column of numbers: x.reshape(-1, 1))"
        )
    if x.numel() == 0:
        raise UserError(f"{where}: no data (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: the data contain NaN or infinite values")
    return x.float().contiguous()


def image_shape_of(point_shape: tuple[int, ...], stated: tuple[int, ...] | None) -> tuple | None:
    """(H, W) when the points are images: stated by ``--image-shape`` (which must hold D
    numbers), or a point of shape (H, W) or (1, H, W); else None."""
    if stated is not None:
        if math.prod(stated) != math.prod(point_shape):
            raise UserError(
                f"--image-shape {' '.join(map(str, stated))} holds {math.prod(stated)} numbers; "
                f"a data point holds {math.prod(point_shape)}"
            )
        shape = tuple(stated)
    else:
        shape = tuple(point_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    return shape if len(shape) == 2 else None


def default_test_split(n: int) -> int:
    """Points held out as the test set of a file without one: a tenth, at least one."""
    return max(1, n // 10)


def load_file_data(
    path: str,
    test_path: str | None = None,
    binarize: str = "none",
    val_size: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    image_shape: tuple[int, ...] | None = None,
    test_split: int | None = None,
) -> ImageData:
    """Training, validation and test sets from data files (module docstring); the rest as
    :func:`split_data`."""
    arrays = read_arrays(path)
    test, where = arrays.get("test"), path
    if test_path is not None:
        if test is not None:
            raise UserError(f"{path} holds a test set already; drop --test-dataset {test_path}")
        test_arrays = read_arrays(test_path)
        if "train" in test_arrays:
            raise UserError(f"--test-dataset {test_path}: give one array, not 'train'/'test'")
        test, where = test_arrays.get("test", test_arrays.get("data")), test_path
    train = arrays.get("train", arrays.get("data"))
    return split_data(
        train,
        test,
        binarize,
        val_size,
        limit_train,
        limit_test,
        seed,
        image_shape,
        test_split,
        (path, where),
    )


def split_data(
    train: torch.Tensor,
    test: torch.Tensor | None = None,
    binarize: str = "none",
    val_size: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    image_shape: tuple[int, ...] | None = None,
    test_split: int | None = None,
    names: tuple[str, str] = ("data", "test data"),
) -> ImageData:
    """Check data of your own (:func:`check_array`) and split it as a run does.

    ``test_split``: points of ``train`` held out as the test set when ``test`` is None (default
    :func:`default_test_split`); the result's ``test_split`` says how many were (None when a
    test set was given). Binarization draws Bernoulli(x), so it needs values in [0, 1];
    validation, subsampling and binarization follow :func:`pyro_vae.data.images.load_data`.
    ``names``: how errors name the training and the test data.
    """
    train = check_array(train, names[0])
    g = torch.Generator().manual_seed(seed)
    held_out = None
    if test is None:
        held_out = test_split if test_split is not None else default_test_split(len(train))
        if held_out >= len(train):
            raise UserError(
                f"{names[0]}: {len(train)} data points are too few to hold out a test set"
            )
        order = torch.randperm(len(train), generator=g)
        test, train = train[order[:held_out]], train[order[held_out:]]
    else:
        test = check_array(test, names[1])
        if test.shape[1:] != train.shape[1:]:
            raise UserError(
                f"{names[1]}: test points have shape {tuple(test.shape[1:])}, training points "
                f"{tuple(train.shape[1:])}"
            )
    point_shape = tuple(train.shape[1:])
    shape = image_shape_of(point_shape, tuple(image_shape) if image_shape else None)
    in_unit = all(((t >= 0) & (t <= 1)).all() for t in (train, test))
    if binarize != "none" and not in_unit:
        raise UserError(
            f"--binarize {binarize} draws Bernoulli(x), which needs values in [0, 1]; "
            f"{names[0]} holds values in [{min(train.min(), test.min()):g}, "
            f"{max(train.max(), test.max()):g}]: use --binarize none"
        )
    train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    if val_size >= len(train):
        raise UserError(f"--val-size {val_size} leaves no training data ({len(train)} points)")
    order = torch.randperm(len(train), generator=g)
    val = train[order[:val_size]] if val_size > 0 else None
    train = train[order[val_size:]]
    if limit_train is not None:
        train = train[:limit_train]
    if limit_test is not None:
        test = test[torch.randperm(len(test), generator=g)[:limit_test]]
    train, test, val = binarize_splits(train, test, val, binarize, g)
    return ImageData(
        train=train,
        test=test,
        val=val,
        image_shape=shape,
        binarize=binarize,
        point_shape=point_shape,
        test_split=held_out,
    )
