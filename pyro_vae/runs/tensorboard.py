"""TensorBoard logging of a run (``--tensorboard``): ``tensorboard --logdir RUN/tensorboard``.

Every epoch, every number of its ``metrics.csv`` row as a scalar (step = epoch); in the epochs
that get the held-out metrics (``--eval-every``), images of test reconstructions and of samples
from the prior, for models that draw them. The images are made under a forked RNG, so logging
does not change training. Needs the optional ``tensorboard`` package
(``pip install 'pyro-vae[tensorboard]'``); :func:`check_available` says so before a run starts.

On ``--resume`` the writer purges the events of epochs after the checkpoint, which the resumed
run logs again.
"""

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from pyro_vae.devices import forked_rng
from pyro_vae.errors import UserError
from pyro_vae.evaluation.figures import image_grid
from pyro_vae.models import LatentModel
from pyro_vae.runs.files import WriteFailed

__all__ = ["Board", "check_available", "IMAGES"]

IMAGES = 8  # reconstructions of the first 8 test images; 8 x 8 samples


def check_available() -> None:
    """A :class:`UserError` unless ``torch.utils.tensorboard`` can be used."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install 'pyro-vae[tensorboard]'"
        )


class Board:
    """The run's TensorBoard writer."""

    def __init__(self, folder: Path, done: int, image_shape: Sequence[int]) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.image_shape = folder, image_shape
        try:
            self.writer = SummaryWriter(str(folder), purge_step=done + 1 if done else None)
        except OSError as exc:
            raise WriteFailed(folder, exc) from None

    def log(self, row: dict, vae: LatentModel, test: torch.Tensor, images: bool) -> None:
        """The epoch's numbers; with ``images``, reconstructions and samples."""
        epoch = row["epoch"]
        for name, value in row.items():
            if name != "epoch" and value is not None and math.isfinite(value):
                self.writer.add_scalar(name, value, epoch)
        try:
            if images and not vae.sequences:
                for name, grid in self._images(vae, test).items():
                    self.writer.add_image(name, grid.unsqueeze(0), epoch)
            self.writer.flush()
        except OSError as exc:  # TensorBoard's own event files: appended by its writer
            raise WriteFailed(self.folder, exc) from None

    @torch.no_grad()
    def _images(self, vae: LatentModel, test: torch.Tensor) -> dict[str, torch.Tensor]:
        was_training = vae.training
        vae.eval()
        grids = {}
        device = next(vae.parameters()).device
        with forked_rng(device):
            if "reconstructions" in vae.figures:
                x = test[:IMAGES].to(device)
                pair = torch.cat([x, vae.reconstruct(x)]).cpu()
                grids["reconstructions"] = image_grid(pair, 2, self.image_shape)
            if "samples" in vae.figures:
                torch.manual_seed(0)
                samples = vae.sample(IMAGES * IMAGES).cpu()
                grids["samples"] = image_grid(samples, IMAGES, self.image_shape)
        vae.train(was_training)
        return grids

    def close(self) -> None:
        self.writer.close()
