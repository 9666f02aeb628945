"""Hostile or damaged settings and data (issue 32): whatever a checkpoint, a config.json, a
recipe, a flag or a data file holds, the answer is one line and exit 2 before anything is built,
and a refused start leaves no run folder behind."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_images, make_fake_mnist, write_idx_images, write_idx_labels
from test_cli import run_main  # one line per mistake: (exit code, stderr)
from test_schedules import small_config

from pyro_vae import TrainConfig, fit, load_vae
from pyro_vae.errors import UserError
from pyro_vae.runs import limits

fit_module = sys.modules["pyro_vae.runs.fit"]  # the attribute pyro_vae.fit is the function


@pytest.fixture
def small_machine(monkeypatch):
    """Sizes are judged against 4 GB whatever this machine has: what the tests refuse is far
    above it, and nothing they let through can exhaust a real machine."""
    monkeypatch.setattr(limits, "physical_memory", lambda: 4 * 10**9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data = make_fake_mnist(root / "data")
    fit(small_config(data, root / "run", epochs=1))
    return root / "run"


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of a tiny trained run, for a test to damage."""
    return shutil.copytree(trained, tmp_path / "run")


def set_saved(run, where: str, **settings) -> None:
    """Write ``settings`` into the run's checkpoint (``where="checkpoint"``) or config.json."""
    if where == "checkpoint":
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        state["config"] |= settings
        torch.save(state, run / "checkpoint.pt")
    else:
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(config | settings))


SAVED = [
    ({"z_dim": "abc"}, "z_dim must be an integer, got 'abc'"),
    ({"z_dim": 1e8}, "z_dim must be an integer, got 100000000.0"),
    ({"hidden_dims": [1e5, 1e5]}, "hidden_dims must be a list of integers"),
    ({"z_dim": 100_000_000}, "--z-dim 100000000: these settings need at least"),
    ({"hidden_dims": [100_000, 100_000]}, "--hidden-dims 100000 100000: these settings need"),
    ({"prior": "mog:1000000000"}, "--prior mog:1000000000: these settings need at least"),
    ({"seed": -1}, "--seed must lie in 0..4294967295, got -1"),
    ({"lr": -1.0}, "--lr must be positive"),
]


@pytest.mark.parametrize("settings, message", SAVED)
def test_a_checkpoints_settings_are_checked_as_flags_are(
    run, capsys, small_machine, settings, message
):
    """evaluate, plot and load_vae rebuild the model from the checkpoint's own settings: a
    wrong type or an impossible size is one line naming it, before anything is allocated."""
    set_saved(run, "checkpoint", **settings)
    for argv in (["evaluate", str(run), "--iw-samples", "2"], ["plot", str(run)]):
        code, err = run_main(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
    with pytest.raises(UserError, match="checkpoint.pt|cannot rebuild"):
        load_vae(str(run))
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("settings, message", SAVED)
def test_a_resumed_runs_settings_are_checked_as_flags_are(
    run, capsys, small_machine, settings, message
):
    """train --resume takes config.json's settings: the same checks, the same one line."""
    set_saved(run, "config", **settings)
    before = (run / "checkpoint.pt").read_bytes()
    code, err = run_main(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert str(run / "config.json") in err or f"the saved settings of {run}" in err, err
    assert (run / "checkpoint.pt").read_bytes() == before


HUGE = [  # flags, the same in a recipe, the message
    (["--z-dim", "100000000"], "z-dim = 100000000", "--z-dim 100000000: these settings need"),
    (
        ["--hidden-dims", "100000", "100000"],
        "hidden-dims = [100000, 100000]",
        "--hidden-dims 100000 100000: these settings need",
    ),
    (["--prior", "mog:100000000"], "prior = 'mog:100000000'", "--prior mog:100000000: these"),
    (
        ["--prior", "vamp(num_components=100000000)"],
        "prior = 'vamp(num_components=100000000)'",
        "give --prior fewer components or layers",
    ),
    (["--num-particles", "100000000"], "num-particles = 100000000", "--num-particles 100000000:"),
    (
        ["--model", "vqvae", "--codebook-size", "1000000000"],
        "model = 'vqvae'\ncodebook-size = 1000000000",
        "--codebook-size 1000000000: these settings need",
    ),
]


@pytest.mark.parametrize("flags, recipe, message", HUGE)
def test_sizes_that_cannot_fit_are_refused_before_a_run_folder_is_made(
    fake_data_dir, tmp_path, capsys, small_machine, flags, recipe, message
):
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_data_dir), "--out", str(out), "--epochs", "1"]
    code, err = run_main(capsys, *argv, *flags)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "more than this machine's memory (4 GB)" in err, err
    assert not out.exists()
    (tmp_path / "huge.toml").write_text(recipe + "\n")
    code, err = run_main(capsys, *argv, "--config", str(tmp_path / "huge.toml"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_the_bound_lets_ordinary_runs_through(small_machine):
    """The defaults, Burda et al.'s two-layer IWAE with k = 50, a conv VQ-VAE and a VampPrior
    of 500 pseudo-inputs are far below the bound; a real machine has some memory."""
    ordinary = [
        TrainConfig(),
        TrainConfig(hidden_dims=(100, 100), z_dim=50, elbo="iwae", num_particles=50),
        TrainConfig(model="vqvae", arch="conv", prior="normal"),
        TrainConfig(prior="vamp:500", hidden_dims=(1000, 1000), batch_size=1024),
    ]
    for config in ordinary:
        limits.check_memory(config)
        assert sum(limits.memory_terms(config).values()) < 10**10, config


def test_physical_memory_is_read_from_the_os():
    assert 2**27 < limits.physical_memory() <= 2**50


def test_a_failed_allocation_while_building_is_one_line_and_no_folder(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    """What the bound lets through may still not fit: torch's allocator failing while the model
    is built is one line, before the run folder is made."""

    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 320000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(fit_module, "_build", no_memory)
    out = tmp_path / "run"
    code, err = run_main(capsys, "train", "--data-dir", str(fake_data_dir), "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert "not enough memory to build the model (DefaultCPUAllocator: can't allocate" in err
    assert not out.exists()


def test_running_out_of_memory_later_is_one_line(fake_data_dir, tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fit_module, "train_one_epoch", no_memory)
    argv = ["train", "--data-dir", str(fake_data_dir), "--out", str(tmp_path / "run")]
    code, err = run_main(capsys, *argv, "--limit-train", "64", "--limit-test", "16")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("pyro-vae: error: out of memory (CUDA out of memory.") and "--" in err


@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_seeds_outside_numpys_range_are_one_line(tmp_path, capsys, seed):
    for command in (["train"], ["fit-prior", str(tmp_path)]):
        code, err = run_main(capsys, *command, "--seed", seed)
        assert code == 2 and err.count("\n") == 1, err
        assert f"argument --seed: '{seed}' is not a seed (an integer in 0..4294967295)" in err
    recipe = tmp_path / "seed.toml"
    recipe.write_text(f"seed = {seed}\n")
    code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and err.count("\n") == 1 and "--seed must lie in 0..4294967295" in err, err


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes("z-dim = 3\n# café\n".encode("latin-1"))
    code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and err.count("\n") == 1, err
    assert f"--config {recipe} is not UTF-8 text (byte 15)" in err


def test_python_settings_of_the_wrong_type_are_one_line():
    with pytest.raises(UserError, match="--z-dim must be an integer, got 'abc'"):
        TrainConfig(z_dim="abc").validate()
    config = dataclasses.replace(TrainConfig(), hidden_dims=[16], lr=1)  # a list, an int
    assert config.validate().hidden_dims == (16,) and isinstance(config.lr, float)
    config = TrainConfig(z_dim=np.int64(3), data_dir=Path("/data"))  # numpy's ints, a Path
    assert (config.validate().z_dim, config.data_dir) == (3, "/data")


def damage(raw, prefix: str, kind: str) -> None:
    if kind == "images":
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", fake_images(50, 1)[:, :20, :20])
    else:
        count = 50 if prefix == "train" else 20  # the fixture wrote 600 and 200 images
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(count) % 10)


@pytest.mark.parametrize("prefix", ["train", "t10k"])
@pytest.mark.parametrize("kind", ["images", "labels"])
def test_mnist_files_of_another_shape_or_count_are_named(
    fake_data_dir, tmp_path, capsys, prefix, kind
):
    raw = fake_data_dir / "MNIST" / "raw"
    damage(raw, prefix, kind)
    out = tmp_path / "run"
    code, err = run_main(capsys, "train", "--data-dir", str(fake_data_dir), "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    name = "images-idx3-ubyte" if kind == "images" else "labels-idx1-ubyte"
    assert f"{raw}/{prefix}-{name} holds " in err, err
    assert ("20x20 images; mnist images are 28x28" if kind == "images" else "labels for") in err
    assert not out.exists()
