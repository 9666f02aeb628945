"""A small MNIST digit classifier that the project trains itself, to tell whether a sequence
model's predicted frames still show the digit they started from.

It is an MLP (784-512-10) trained by Adam on MNIST's training digits, each minibatch half grey
(the digits as MNIST stores them, as a model's mean frames are) and half binarized, every image
moved by up to ``MAX_JITTER`` pixels horizontally so that frames re-aligned to within a pixel
or two are still read. It is trained once and cached in the project's cache folder
(``$XDG_CACHE_HOME/pyro-vae/classifiers`` or ``~/.cache/pyro-vae/classifiers``, or a folder
you give), under a name that fingerprints the training images, so other MNIST files get their
own classifier; a cache that cannot be written only costs retraining next time.
"""

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from pyro_vae.data.images import default_cache_dir, load_images
from pyro_vae.data.sequences import roll_frames
from pyro_vae.runs.files import WriteFailed, write_torch

__all__ = ["DigitClassifier", "digit_classifier", "train_digit_classifier", "MAX_JITTER"]

#: The largest horizontal shift, in pixels, of a training image.
MAX_JITTER = 2
_VERSION = 1


class DigitClassifier(nn.Module):
    """images (..., 784) in [0, 1] -> logits (..., 10) of the ten digits."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely digit of each image (...,)."""
        return self.net(x).argmax(-1)


def train_digit_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0
) -> DigitClassifier:
    """A :class:`DigitClassifier` trained on ``images`` (N, 784) with ``labels`` (N,) (see the
    module docstring), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=g)
        for start in range(0, images.shape[0], 128):
            batch = order[start : start + 128]
            x = images[batch]
            half = torch.rand(x.shape[0], 1, generator=g) < 0.5
            x = torch.where(half, torch.bernoulli(x, generator=g), x)
            jitter = torch.randint(-MAX_JITTER, MAX_JITTER + 1, (x.shape[0],), generator=g)
            loss = nn.functional.cross_entropy(model(roll_frames(x, jitter)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def digit_classifier(
    data_dir: str | None = None, cache_dir: str | Path | None = None
) -> DigitClassifier:
    """The classifier of MNIST's training digits under ``data_dir`` (or ``PYRO_VAE_DATA_DIR``,
    or the download cache), from the cache in ``cache_dir`` (default: the project's cache
    folder, see the module docstring), trained and cached first if it is not there."""
    images, labels = load_images("mnist", train=True, data_dir=data_dir, labels=True)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "classifiers"
    path = folder / f"mnist-digits-v{_VERSION}-{digest[:16]}.pt"
    model = DigitClassifier()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
            pass  # a damaged cache file: train again and overwrite it
    model = train_digit_classifier(images, labels)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_torch(path, model.state_dict())
    except (OSError, WriteFailed):
        pass  # no cache: the next call trains again
    return model
