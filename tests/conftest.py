"""Shared fixtures: seeded RNGs, a clean Pyro param store, and a tiny fake MNIST on disk.

The fake data set is written in torchvision's raw IDX layout, so the library's real loading
path runs on it; tests that need the real MNIST use ``real_data_dir`` and skip without it.
"""

import os
import struct
from pathlib import Path

import pyro
import pytest
import torch

# Tiny networks: one thread is as fast as two and keeps parallel jobs from oversubscribing.
torch.set_num_threads(1)

#: The limit on a subprocess or a wait in a test: a guard against a hang only, an hour, far
#: above what any machine takes, so that a slow or busy machine never fails a test.
HANG_GUARD_S = 3600


@pytest.fixture(autouse=True)
def _seed_and_clean():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


def write_idx_images(path: Path, images: torch.Tensor) -> None:
    n, h, w = images.shape
    path.write_bytes(
        struct.pack(">IIII", 0x0803, n, h, w) + images.to(torch.uint8).numpy().tobytes()
    )


def write_idx_labels(path: Path, labels: torch.Tensor) -> None:
    path.write_bytes(
        struct.pack(">II", 0x0801, len(labels)) + labels.to(torch.uint8).numpy().tobytes()
    )


def fake_images(n: int, seed: int) -> torch.Tensor:
    """Blurry strokes: a bright bar at a random position and angle, so the data has structure."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = 9 + 10 * torch.rand(n, 2, generator=g)
    angle = 3.1416 * torch.rand(n, generator=g)
    dx, dy = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    dist = (dx * torch.sin(angle)[:, None, None] - dy * torch.cos(angle)[:, None, None]).abs()
    along = (dx * torch.cos(angle)[:, None, None] + dy * torch.sin(angle)[:, None, None]).abs()
    img = torch.exp(-(dist**2) / 2.0) * (along < 8).float()
    return (255 * img).round().clamp(0, 255)


def make_fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200):
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", fake_images(n, seed))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n) % 10)
    return root


@pytest.fixture
def fake_data_dir(tmp_path: Path) -> Path:
    """A folder holding fake MNIST and Fashion-MNIST in torchvision's layout (600/200 images)."""
    root = tmp_path / "data"
    make_fake_mnist(root, "MNIST")
    make_fake_mnist(root, "FashionMNIST")
    return root


@pytest.fixture
def real_data_dir() -> Path:
    """The real MNIST folder from PYRO_VAE_DATA_DIR; the test is skipped when it is not set."""
    path = os.environ.get("PYRO_VAE_DATA_DIR")
    if not path or not (Path(path) / "MNIST" / "raw").is_dir():
        pytest.skip("PYRO_VAE_DATA_DIR does not point at a folder with MNIST/raw")
    return Path(path)
