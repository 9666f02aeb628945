"""Figures of a run, written as PNG files into the run's ``figures/`` folder.

- ``reconstructions.png``: test images (top row of each pair) above their reconstructions.
- ``samples.png``: means of p(x|z) for z drawn from the prior.
- ``curves.png``: training loss and test ELBO per data point against epochs.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.vae import VAE  # noqa: E402

__all__ = ["image_grid", "plot_reconstructions", "plot_samples", "plot_curves", "write_figures"]


def image_grid(images: torch.Tensor, rows: int, image_shape: Sequence[int]) -> torch.Tensor:
    """Tile (rows * cols, D) images into one (rows * h, cols * w) array with 1-pixel gaps."""
    h, w = image_shape
    cols = images.shape[0] // rows
    grid = torch.ones(rows * (h + 1) - 1, cols * (w + 1) - 1)
    for i, img in enumerate(images[: rows * cols].reshape(-1, h, w)):
        r, c = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return grid


def _save_grid(grid: torch.Tensor, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 0.5, grid.shape[0] / 40 + 0.7))
    ax.imshow(grid.cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_reconstructions(
    vae: VAE,
    x: torch.Tensor,
    path: Path,
    image_shape: Sequence[int],
    pairs: int = 3,
    cols: int = 10,
) -> None:
    """Rows of originals, each above the row of their reconstructions."""
    x = x[: pairs * cols]
    recon = vae.reconstruct(x.to(next(vae.parameters()).device)).cpu()
    rows = [
        t
        for i in range(pairs)
        for t in (x[i * cols : (i + 1) * cols], recon[i * cols : (i + 1) * cols])
    ]
    grid = image_grid(torch.cat(rows), rows=2 * pairs, image_shape=image_shape)
    _save_grid(grid, "test images (odd rows) and their reconstructions (even rows)", path)


def plot_samples(vae: VAE, path: Path, image_shape: Sequence[int], n: int = 8) -> None:
    """An n x n grid of p(x|z) means for z ~ p(z)."""
    grid = image_grid(vae.sample(n * n).cpu(), rows=n, image_shape=image_shape)
    _save_grid(grid, "samples: mean of p(x|z), z ~ p(z)", path)


def plot_curves(metrics: list[dict[str, float]], path: Path) -> None:
    """Training objective and test ELBO (nats per data point) against epochs."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(epochs, [-m["train_loss"] for m in metrics], "o-", label="train (-loss)")
    ax.plot(epochs, [m["test_elbo"] for m in metrics], "s-", label="test ELBO")
    if "val_elbo" in metrics[0] and metrics[0]["val_elbo"] == metrics[0]["val_elbo"]:
        ax.plot(epochs, [m["val_elbo"] for m in metrics], "^-", label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_figures(
    vae: VAE,
    test: torch.Tensor,
    metrics: list[dict[str, float]],
    folder: Path,
    image_shape: Sequence[int] = (28, 28),
) -> list[Path]:
    """Write every figure of a run into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "reconstructions.png", folder / "samples.png"]
    was_training = vae.training
    vae.eval()
    plot_reconstructions(vae, test, paths[0], image_shape)
    plot_samples(vae, paths[1], image_shape)
    vae.train(was_training)
    if metrics:
        paths.append(folder / "curves.png")
        plot_curves(metrics, paths[-1])
    return paths
