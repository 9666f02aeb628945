"""A run folder is data, not code: loading a checkpoint or a run's plugin specs never runs
anything the folder provides."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run_main  # one line per mistake: (exit code, stderr)
from test_schedules import small_config as schedules_config

from pyro_vae import TrainConfig, fit, load_vae
from pyro_vae.errors import UserError
from pyro_vae.runs.fit import checkpoint_state, setup, train_one_epoch
from pyro_vae.runs.folder import Run


class WriteMarker:
    """Unpickling this object creates ``path``: what an attack would do instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def small_config(data_dir: Path, out: Path, **changes) -> TrainConfig:
    """test_schedules' tiny run, one epoch, with its held-out metrics at the end."""
    return schedules_config(
        data_dir, out, **({"epochs": 1, "eval_every": 5, "eval_iw_samples": 3} | changes)
    )


def test_a_checkpoint_carrying_code_is_refused_by_every_command(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run"))
    state = torch.load(run.checkpoint_path, weights_only=True)
    marker = tmp_path / "marker"
    state["extra"] = WriteMarker(marker)
    torch.save(state, run.checkpoint_path)
    before = run.checkpoint_path.read_bytes()
    commands = [
        ["evaluate", str(run.path)],
        ["plot", str(run.path)],
        ["train", "--resume", str(run.path), "--epochs", "2"],
        ["fit-prior", str(run.path)],
    ]
    for argv in commands:
        code, err = run_main(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert "refusing checkpoint" in err and "io.open" in err, err
    with pytest.raises(UserError, match="could run code"):
        load_vae(str(run.path))
    assert not marker.exists()
    assert run.checkpoint_path.read_bytes() == before  # nothing was overwritten


def test_checkpoints_load_with_weights_only_for_every_trainer(fake_data_dir, tmp_path):
    """Every trainer's state, the model's and the RNG states are tensors and plain data, and a
    save -> load round trip restores them exactly (the resume tests check the continuation)."""
    variants = {
        "svi": {},
        "em": {"algo": "em", "e_rule": "aggressive", "val_size": 20},
        "mcem": {"algo": "mcem", "mc_warmup": 2, "mc_samples": 2, "mc_eval_samples": 2},
        "vqvae": {"model": "vqvae", "codebook_size": 8, "code_dim": 2, "codebook_update": "ema"},
    }
    for name, changes in variants.items():
        config = small_config(fake_data_dir, tmp_path / name, eval_every=0, **changes)
        data, vae, trainer, data_rng = setup(config)
        train_one_epoch(config, data, vae, trainer, data_rng, 1)
        state = checkpoint_state(config, data, vae, trainer, 1, data_rng)
        (tmp_path / name).mkdir()
        Run(tmp_path / name).save_checkpoint(state)
        loaded = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)  # no allowlist
        assert_equal_trees(loaded["trainer"], state["trainer"], name)
        assert_equal_trees(loaded["rng"], state["rng"], name)
        assert loaded["version"] == 2


def assert_equal_trees(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_trees(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_trees(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where  # NaN equals NaN here


def test_a_version_1_checkpoint_resumes_exactly(fake_data_dir, tmp_path):
    """Version 1 held numpy's RNG state as a numpy array: read without unpickling code, and the
    run continues as if written today."""
    straight = fit(small_config(fake_data_dir, tmp_path / "straight", epochs=2))
    old = fit(small_config(fake_data_dir, tmp_path / "old"))
    state = torch.load(old.checkpoint_path, weights_only=True)
    numpy_state = state["rng"]["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    state["rng"]["numpy"] = ("MT19937", keys, numpy_state["pos"], 0, 0.0)
    state["version"] = 1
    torch.save(state, old.checkpoint_path)
    resumed = fit(small_config(fake_data_dir, tmp_path / "old", epochs=2, resume=str(old.path)))
    a, b = Run(straight.path).load_checkpoint(), Run(resumed.path).load_checkpoint()
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    assert b["version"] == 2


PLUGIN = """
from pathlib import Path
Path({marker!r}).write_text("ran")

import pyro.distributions as dist
import torch
from torch import nn


class Flat(nn.Module):
    def __init__(self, z_dim):
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self):
        return dist.Normal(self.loc, 1.0).to_event(1)
"""


@pytest.mark.slow
def test_reloading_never_imports_code_the_run_folder_provides(fake_data_dir, tmp_path):
    """A config.json that names a module or file inside its own run folder (or a file by a
    relative path) is refused in one line, and the plugin's code never runs."""
    mine = tmp_path / "mine.py"
    mine.write_text(PLUGIN.format(marker=str(tmp_path / "trusted-ran")))
    run = fit(small_config(fake_data_dir, tmp_path / "run", prior=f"{mine}:Flat"))
    assert load_vae(str(run.path))[0].prior.loc.shape == (2,)  # a file outside: fine
    marker = tmp_path / "marker"
    (run.path / "evil.py").write_text(PLUGIN.format(marker=str(marker)))
    config = json.loads(run.config_path.read_text())
    state = torch.load(run.checkpoint_path, weights_only=True)
    for prior, message in [
        (f"{run.path / 'evil.py'}:Flat", "which the run folder"),
        ("evil:Flat", "which the run folder"),
        ("evil.py:Flat", "by a relative path"),
    ]:
        config["prior"] = state["config"]["prior"] = prior
        run.config_path.write_text(json.dumps(config))
        torch.save(state, run.checkpoint_path)
        commands = [["evaluate", str(run.path)], ["train", "--resume", str(run.path)]]
        for argv in commands:
            done = subprocess.run(
                [sys.executable, "-m", "pyro_vae", *argv],
                cwd=run.path,  # the folder is the working directory: `-m` puts it on sys.path
                capture_output=True,
                text=True,
            )
            assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
            assert message in done.stderr, done.stderr
        assert not marker.exists()
