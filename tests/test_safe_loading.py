"""A run folder is data, not code: loading a checkpoint or a run's plugin specs never runs
anything the folder provides."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_fake_mnist
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


# --- issue 32: code from the run folder, by any spelling -----------------------------------


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> Path:
    """A one-epoch run whose prior is the plugin ``Flat`` from a file outside the run."""
    root = tmp_path_factory.mktemp("flat")
    mine = root / "trusted" / "mine.py"
    mine.parent.mkdir()
    mine.write_text(PLUGIN.format(marker=str(root / "trusted-ran")))
    data = make_fake_mnist(root / "data")
    fit(small_config(data, root / "run", prior=f"{mine}:Flat", eval_every=0))
    return root / "run"


@pytest.fixture
def shared(flat_run, tmp_path, monkeypatch) -> Path:
    """``W/runs/shared``: a copy of that run that carries ``evil.py``, whose top-level code
    writes ``W/marker``; the working directory is ``W``, first on ``sys.path`` (as under
    ``python -m``). Modules of the test's names are forgotten before and after."""
    work = tmp_path / "W"
    run = work / "runs" / "shared"
    shutil.copytree(flat_run, run)
    (run / "evil.py").write_text(PLUGIN.format(marker=str(work / "marker")))
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    forget_modules()
    yield run
    forget_modules()


def forget_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("runs", "evil", "lib", "link")]:
        del sys.modules[name]


def name_prior(run: Path, prior: str, **more) -> None:
    """Make config.json and the checkpoint name ``prior`` (what an attacker edits)."""
    config = json.loads((run / "config.json").read_text())
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    config |= {"prior": prior, **more}
    state["config"] |= {"prior": prior, **more}
    (run / "config.json").write_text(json.dumps(config))
    torch.save(state, run / "checkpoint.pt")


def test_a_dotted_module_through_a_namespace_package_runs_in_no_command(shared, capsys):
    """``runs.shared.evil``: ``runs`` is a namespace package outside the run folder, but the
    module's file lies inside it; every command refuses before any level is imported."""
    name_prior(shared, "runs.shared.evil:Flat")
    for argv in [
        ["evaluate", "runs/shared", "--iw-samples", "2"],
        ["plot", "runs/shared"],
        ["train", "--resume", "runs/shared", "--epochs", "2"],
        ["fit-prior", "runs/shared"],
    ]:
        code, err = run_main(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert "refusing to import" in err and "the run folder runs/shared provides" in err, err
    with pytest.raises(UserError, match="refusing to import"):
        load_vae("runs/shared")
    assert not Path("marker").exists()


def test_every_spelling_of_code_inside_the_folder_is_refused(shared):
    """Absolute and relative paths, ``..``, a dotted module, and links into the folder from
    outside it (a file and a folder): the file that would run lies inside, so nothing runs."""
    work = shared.parent.parent
    (work / "lib.py").symlink_to(shared / "evil.py")
    (work / "link").symlink_to(shared, target_is_directory=True)
    (shared / "sub").mkdir()
    spellings = [
        f"{shared}/evil.py:Flat",
        f"{shared}/sub/../evil.py:Flat",
        "runs/shared/evil.py:Flat",
        "runs/../runs/shared/evil.py:Flat",
        "runs.shared.evil:Flat",
        "lib:Flat",
        f"{work}/lib.py:Flat",
        "link.evil:Flat",
        "..runs.shared.evil:Flat",
    ]
    for spec in spellings:
        name_prior(shared, spec)
        with pytest.raises(UserError) as refused:
            load_vae(str(shared))
        assert (
            "refusing" in str(refused.value)
            or "relative path" in str(refused.value)
            or ("neither a module name" in str(refused.value))
        ), (spec, refused.value)
        assert not (work / "marker").exists(), spec


def test_a_package_the_run_folder_installs_on_sys_path_is_refused(shared, monkeypatch):
    """A run folder that is on ``sys.path`` (the working directory under ``python -m``) and
    ships package metadata whose entry point names its own module: refused as well."""
    info = shared / "evil-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pyro_vae.priors]\nflat = evil:Flat\n")
    monkeypatch.syspath_prepend(str(shared))
    name_prior(shared, "flat")
    with pytest.raises(UserError, match="refusing to import .*evil.py"):
        load_vae(str(shared))
    assert not (shared.parent.parent / "marker").exists()


def test_a_config_file_from_a_run_folder_cannot_import_its_plugin(shared, capsys):
    """``--config RUN/config.json`` (the README's way to repeat a run) naming a plugin file
    inside RUN by absolute path, relative path or dotted module: refused, no folder made."""
    flags = ["train", "--config", "runs/shared/config.json", "--out", "again", "--quiet"]
    for spec in [f"{shared}/evil.py:Flat", "runs/shared/evil.py:Flat", "runs.shared.evil:Flat"]:
        name_prior(shared, spec)
        code, err = run_main(capsys, *flags)
        assert code == 2 and err.count("\n") == 1, err
        assert "the folder of --config runs/shared" in err, err
    assert not Path("marker").exists() and not Path("again").exists()
    recipe = Path("trusting.toml")
    recipe.write_text("trust-plugins = true\n")
    code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and "is given on the command line only" in err and err.count("\n") == 1


@pytest.mark.slow
def test_the_user_may_name_the_plugin_again_or_trust_the_folder(shared, capsys):
    """The two ways in: the same spec on the command line (resume, --config), or
    --trust-plugins (every command; ``load_vae(trust_plugins=True)``); either way one warning
    line says where the code lies. A folder cannot trust itself (its config.json saying so is
    ignored)."""
    spec = f"{shared}/evil.py:Flat"
    name_prior(shared, spec, trust_plugins=True)
    marker = Path("marker")
    code, err = run_main(capsys, "evaluate", "runs/shared", "--iw-samples", "2")
    assert code == 2 and "refusing to import" in err and not marker.exists()
    code, err = run_main(capsys, "evaluate", "runs/shared", "--iw-samples", "2", "--trust-plugins")
    assert code == 0 and marker.exists(), err
    assert err.count("\n") == 1 and "imports" in err and "lies inside the run folder" in err, err
    # the module is loaded now (it runs once per process): what follows shows it is let in
    assert load_vae("runs/shared", trust_plugins=True)[0].prior.loc.shape == (2,)
    argv = ["train", "--resume", "runs/shared", "--epochs", "2", "--quiet", "--prior", spec]
    code, err = run_main(capsys, *argv)
    assert code == 0 and len((shared / "metrics.csv").read_text().splitlines()) == 3, err
    flags = ["train", "--config", "runs/shared/config.json", "--quiet"]
    code, err = run_main(capsys, *flags, "--out", "again", "--prior", "runs/shared/evil.py:Flat")
    assert code == 0 and Path("again/checkpoint.pt").is_file(), err
    code, err = run_main(capsys, *flags, "--out", "trusted", "--trust-plugins")
    assert code == 0 and "lies inside the folder of --config runs/shared" in err, err


def test_a_module_beside_the_run_folder_runs_with_a_warning(shared, capsys):
    """The documented case: a module in the working directory next to the run folder is
    imported (it is on the user's sys.path), and one warning line says where it lies."""
    run = shutil.copytree(shared, shared.parent.parent / "run")
    shutil.move(run / "evil.py", run.parent / "evil.py")
    name_prior(run, "evil:Flat")
    code, err = run_main(capsys, "evaluate", "run", "--iw-samples", "2")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [
        f"pyro-vae: warning: --prior evil:Flat imports {run.parent / 'evil.py'}, which lies "
        "beside the run folder run"
    ], err
