"""Image data sets as resident tensors, binarization, and shuffled minibatches.

Images are loaded once through torchvision into float tensors of shape (N, D) with values in
[0, 1]; training slices minibatches out of them, so there are no per-sample Python transforms
in the hot loop.

Where the files come from, in order: ``--data-dir``, the ``PYRO_VAE_DATA_DIR`` environment
variable, else a cache folder (``$XDG_CACHE_HOME/pyro-vae`` or ``~/.cache/pyro-vae``) into which
torchvision downloads the data on first use. A folder named explicitly is never downloaded into.
A command on a finished run (``--resume``, evaluate, plot, fit-prior) reads the folder the run
recorded where it exists here, else goes on down that list (:func:`recorded_data_dir`).

Binarization (``--binarize``):

- ``dynamic`` (default; the standard for likelihood results since Salakhutdinov and Murray
  2008 and Burda et al. 2016): every epoch, each training pixel is redrawn as
  Bernoulli(intensity). Validation and test sets are binarized once, with a fixed seed, so that
  evaluations compare.
- ``static``: one binarization of every split, drawn from ``--seed``.
- ``none``: keep intensities in [0, 1] (use a Gaussian likelihood, not Bernoulli).

``moving-mnist`` is a data set of sequences (:mod:`pyro_vae.data.sequences`): MNIST digits moving
by a pixel per frame, ``--seq-len`` frames each, stored flat as (N, T * 784).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.data.sequences import moving_digits
from pyro_vae.errors import UserError

__all__ = [
    "DATASETS",
    "SEQUENCE_DATASETS",
    "BINARIZATIONS",
    "ImageData",
    "resolve_data_root",
    "recorded_data_dir",
    "load_images",
    "load_data",
    "binarize_splits",
    "minibatches",
]

DATASETS = ("mnist", "fashion-mnist", "moving-mnist")
SEQUENCE_DATASETS = ("moving-mnist",)
BINARIZATIONS = ("dynamic", "static", "none")
ENV_VAR = "PYRO_VAE_DATA_DIR"
IMAGE_SHAPE = (28, 28)  # every built-in data set's images (MNIST and Fashion-MNIST)
# Fixed seed for binarizing held-out splits under dynamic binarization: the same test set for
# every run, whatever --seed is.
EVAL_BINARIZATION_SEED = 20160601


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro-vae"


def resolve_data_root(data_dir: str | None = None) -> tuple[Path, bool]:
    """The folder to read, and whether torchvision may download into it."""
    if data_dir:
        return Path(data_dir).expanduser(), False
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), False
    return default_cache_dir(), True


def recorded_data_dir(recorded: str | None) -> str | None:
    """The data folder a run recorded, where it exists on this machine; else None, so that
    ``PYRO_VAE_DATA_DIR`` or the download cache applies. A run folder from another machine (or
    a data folder since moved) names a folder that is not here; a ``--data-dir`` given to the
    command overrides both."""
    if recorded and Path(recorded).expanduser().is_dir():
        return recorded
    return None


def _torchvision_class(name: str):
    from torchvision import datasets  # imported lazily: torchvision is slow to import

    if name in ("mnist", "moving-mnist"):
        return datasets.MNIST
    if name == "fashion-mnist":
        return datasets.FashionMNIST
    raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def load_images(name: str, train: bool, data_dir: str | None = None, labels: bool = False):
    """One split of a data set as floats in [0, 1], shape (N, 28 * 28) (and its labels if asked).

    Raises :class:`UserError` with a one-line explanation when the files are missing, unreadable
    or malformed, or when downloading fails (offline).
    """
    cls = _torchvision_class(name)
    root, may_download = resolve_data_root(data_dir)
    where = f"{root}/{cls.__name__}/raw"
    hint = f"point --data-dir or {ENV_VAR} at a folder holding {cls.__name__}/raw/*-ubyte"
    if not may_download and not root.is_dir():
        raise UserError(f"data folder {root} does not exist; {hint}")
    try:
        split = cls(str(root), train=train, download=may_download)
        images = split.data
    except RuntimeError as exc:
        if "not found" in str(exc).lower():
            raise UserError(f"no {name} files under {where}; {hint}") from None
        reason = str(exc).splitlines()[0].rstrip(":")
        raise UserError(f"could not read {name} from {where} ({reason}); {hint}") from None
    except (OSError, ValueError, AssertionError) as exc:
        action = "download" if may_download else "read"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not {action} {name} into {where} ({reason}); {hint}") from None
    prefix = "train" if train else "t10k"
    if images.dim() != 3 or images.dtype != torch.uint8 or images.shape[0] == 0:
        raise UserError(f"{where} does not hold {name} images (got shape {tuple(images.shape)})")
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise UserError(
            f"{where}/{prefix}-images-idx3-ubyte holds {images.shape[1]}x{images.shape[2]} "
            f"images; {name} images are {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}; {hint}"
        )
    if split.targets.dim() != 1 or len(split.targets) != len(images):
        raise UserError(
            f"{where}/{prefix}-labels-idx1-ubyte holds {len(split.targets)} labels for "
            f"{len(images)} images in {prefix}-images-idx3-ubyte; {hint}"
        )
    if labels:
        return images.reshape(images.shape[0], -1).float().div_(255.0), split.targets.long()
    return images.reshape(images.shape[0], -1).float().div_(255.0)


@dataclass
class ImageData:
    """Train/validation/test tensors (N, D) plus how the training set is binarized per epoch.

    ``image_shape``: (H, W) of an image, None when the data are not images (no image figures);
    ``point_shape``: the shape of one data point before flattening (default ``(D,)``), what a
    model of your own takes; ``test_split``: points of a data file held out as the test set.
    """

    train: torch.Tensor
    test: torch.Tensor
    val: torch.Tensor | None
    image_shape: tuple[int, int] | None
    binarize: str
    test_labels: torch.Tensor | None = None  # class of each test image, for figures
    seq_len: int = 1  # frames per data point: 1 for images, T for a data set of sequences
    point_shape: tuple[int, ...] | None = None
    test_split: int | None = None

    @property
    def shape_per_point(self) -> tuple[int, ...]:
        """The shape of one data point as a model of your own takes it."""
        return self.point_shape or (self.data_dim,)

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    @property
    def frame_dim(self) -> int:
        """Pixels per frame (per image, for a data set of images)."""
        return self.data_dim // self.seq_len

    def train_epoch(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training tensor for one epoch: freshly binarized when binarization is dynamic."""
        if self.binarize == "dynamic":
            return torch.bernoulli(self.train, generator=generator)
        return self.train

    def train_sample(self, limit: int) -> torch.Tensor:
        """The first ``limit`` training images as evaluations see them: binarized once with the
        fixed seed of the held-out splits when binarization is dynamic (for train-set curves)."""
        train = self.train[:limit]
        if self.binarize == "dynamic":
            eval_g = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
            return torch.bernoulli(train, generator=eval_g)
        return train


def load_data(
    dataset: str = "mnist",
    data_dir: str | None = None,
    binarize: str = "dynamic",
    val_size: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    seq_len: int = 20,
) -> ImageData:
    """Load a data set, hold out ``val_size`` training images, subsample, and binarize.

    Subsampling and the validation split are random but fixed by ``seed``. For a data set of
    sequences, each image becomes a sequence of ``seq_len`` frames after subsampling, with
    directions drawn from ``seed`` (training and validation) and from a fixed seed (test).
    """
    if binarize not in BINARIZATIONS:
        choices = ", ".join(BINARIZATIONS)
        raise UserError(f"unknown binarization {binarize!r}; choose from {choices}")
    train = load_images(dataset, train=True, data_dir=data_dir)
    test, test_labels = load_images(dataset, train=False, data_dir=data_dir, labels=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(train.shape[0], generator=g)
    if val_size >= train.shape[0]:
        raise UserError(f"--val-size {val_size} leaves no training data ({train.shape[0]} images)")
    val = train[order[:val_size]] if val_size > 0 else None
    train = train[order[val_size:]]
    if limit_train is not None:
        train = train[:limit_train]
    if limit_test is not None:
        keep = torch.randperm(test.shape[0], generator=g)[:limit_test]
        test, test_labels = test[keep], test_labels[keep]
    if dataset in SEQUENCE_DATASETS:
        train, _ = moving_digits(train, seq_len, g)
        val = moving_digits(val, seq_len, g)[0] if val is not None else None
        test, _ = moving_digits(
            test, seq_len, torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        )
    train, test, val = binarize_splits(train, test, val, binarize, g)
    return ImageData(
        train=train,
        test=test,
        val=val,
        image_shape=IMAGE_SHAPE,
        binarize=binarize,
        test_labels=test_labels,
        seq_len=seq_len if dataset in SEQUENCE_DATASETS else 1,
        point_shape=None if dataset in SEQUENCE_DATASETS else (1, 28, 28),
    )


def binarize_splits(
    train: torch.Tensor,
    test: torch.Tensor,
    val: torch.Tensor | None,
    binarize: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Held-out splits get one fixed binarization; ``static`` binarizes the training set too
    (from ``generator``); ``dynamic`` leaves it to every epoch; ``none`` changes nothing."""
    if binarize == "none":
        return train, test, val
    eval_g = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
    test = torch.bernoulli(test, generator=eval_g)
    val = torch.bernoulli(val, generator=eval_g) if val is not None else None
    if binarize == "static":
        train = torch.bernoulli(train, generator=generator)
    return train, test, val


def minibatches(
    x: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled minibatches sliced from a resident tensor; the last one may be smaller."""
    order = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        yield x[order[start : start + batch_size]]
