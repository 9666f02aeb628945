"""Parts of your own by name: priors, likelihoods, networks and models from a module, a file or
an installed package's entry point; every command rebuilds the run from config.json."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_cli import run_main  # one line per mistake: (exit code, stderr)

from pyro_vae import load_vae
from pyro_vae.cli.main import main
from pyro_vae.errors import UserError
from pyro_vae.models import model_class
from pyro_vae.plugins import absolute_file_spec, parse_spec

PLUGIN_SOURCE = '''
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import VAE


class StudentT(nn.Module):
    """p(z) = prod_j StudentT(z_j; df, 0, s_j) with learned scales."""

    def __init__(self, z_dim, df=5.0):
        super().__init__()
        self.df = df
        self.log_scale = nn.Parameter(torch.zeros(z_dim))
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self):
        return dist.StudentT(self.df, self.loc, self.log_scale.exp()).to_event(1)


class LaplaceLikelihood(nn.Module):
    params_per_dim = 1

    def __init__(self, data_dim, scale=0.3):
        super().__init__()
        self.register_buffer("scale", torch.full((data_dim,), scale))

    def forward(self, params):
        return dist.Laplace(params, self.scale).to_event(1)

    def mean(self, params):
        return params.clamp(0, 1)


class TinyEncoder(nn.Module):
    def __init__(self, data_dim, z_dim, width=8):
        super().__init__()
        self.net = nn.Linear(data_dim, width)
        self.heads = nn.Linear(width, 2 * z_dim)

    def forward(self, x):
        loc, raw = self.heads(torch.relu(self.net(x))).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-4


class TinyDecoder(nn.Module):
    def __init__(self, z_dim, out_dim):
        super().__init__()
        self.net = nn.Linear(z_dim, out_dim)

    def forward(self, z):
        return self.net(z)


class MyVAE(VAE):
    """A model of one's own: here the library's VAE under another name."""


class PositionCodes(nn.Module):
    """A code prior: independent categoricals per grid position, as the built-in one."""

    def __init__(self, num_codes, num_positions, init=0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_positions, num_codes), init))

    def forward(self):
        return dist.Categorical(logits=self.logits).to_event(1)


def not_a_module(z_dim):
    return "a string"
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path holding the module ``my_parts`` (fresh for each test)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_parts.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "my_parts", raising=False)
    yield folder
    sys.modules.pop("my_parts", None)


def train_flags(data_dir: Path, out: Path) -> list[str]:
    return [
        "train",
        "--data-dir",
        str(data_dir),
        "--limit-train",
        "128",
        "--limit-test",
        "32",
        "--epochs",
        "1",
        "--z-dim",
        "3",
        "--hidden-dims",
        "16",
        "--eval-iw-samples",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]


def test_parse_spec_forms():
    assert parse_spec("mog:10", "--prior").arg == 10
    spec = parse_spec("my_parts:StudentT(df=3, name='a')", "--prior")
    assert (spec.target, spec.arg, spec.kwargs) == (
        "my_parts:StudentT",
        None,
        {"df": 3, "name": "a"},
    )
    spec = parse_spec("path/to/file.py:StudentT", "--prior")
    assert spec.is_import and spec.target == "path/to/file.py:StudentT"
    assert parse_spec("vamp(num_components=5)", "--prior").kwargs == {"num_components": 5}
    assert absolute_file_spec("mog:10") == "mog:10"
    assert absolute_file_spec("a/b.py:C(x=1)") == f"{Path('a/b.py').resolve()}:C(x=1)"


@pytest.mark.slow
def test_prior_by_module_path_in_every_command(plugin_dir, fake_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    spec = "my_parts:StudentT(df=3.0)"
    code, err = run_main(capsys, *train_flags(fake_data_dir, out), "--prior", spec)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["prior"] == spec
    vae, _ = load_vae(str(out))  # no prior=...: rebuilt by name, learned scales loaded
    assert type(vae.prior).__name__ == "StudentT" and vae.prior.df == 3.0
    assert not torch.equal(vae.prior.log_scale, torch.zeros(3))
    assert run_main(capsys, "evaluate", str(out), "--iw-samples", "4")[0] == 0
    assert run_main(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")[0] == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs


@pytest.mark.slow
def test_file_form_is_recorded_absolute_and_reloads_anywhere(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    (tmp_path / "parts.py").write_text(PLUGIN_SOURCE)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    flags = train_flags(fake_data_dir, out)
    code, err = run_main(capsys, *flags, "--prior", "parts.py:StudentT", "--algo", "em")
    assert code == 0, err
    recorded = json.loads((out / "config.json").read_text())["prior"]
    assert recorded == f"{tmp_path / 'parts.py'}:StudentT"
    monkeypatch.chdir(Path(__file__).parent)
    assert run_main(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")[0] == 0
    assert type(load_vae(str(out))[0].prior).__name__ == "StudentT"
    # the same relative spec given again on resume is the same setting, not a conflict
    monkeypatch.chdir(tmp_path)
    flags = ["train", "--resume", str(out), "--epochs", "3", "--prior", "parts.py:StudentT"]
    assert run_main(capsys, *flags, "--quiet")[0] == 0


@pytest.mark.slow
def test_likelihood_and_networks_of_your_own(plugin_dir, fake_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = train_flags(fake_data_dir, out) + ["--binarize", "none"]
    flags += ["--likelihood", "my_parts:LaplaceLikelihood(scale=0.2)"]
    flags += ["--encoder", "my_parts:TinyEncoder(width=5)", "--decoder", "my_parts:TinyDecoder"]
    code, err = run_main(capsys, *flags)
    assert code == 0, err
    vae, _ = load_vae(str(out))
    assert type(vae.likelihood).__name__ == "LaplaceLikelihood"
    assert torch.allclose(vae.likelihood.scale, torch.full((784,), 0.2))
    assert vae.encoder.net.out_features == 5 and type(vae.decoder).__name__ == "TinyDecoder"
    # the autoencoder takes the same networks; the VQ-VAE (grids of codes) refuses them
    ae = tmp_path / "ae"
    flags = train_flags(fake_data_dir, ae) + ["--model", "ae"]
    assert run_main(capsys, *flags, "--encoder", "my_parts:TinyEncoder")[0] == 0
    flags = train_flags(fake_data_dir, tmp_path / "vq") + ["--model", "vqvae"]
    code, err = run_main(capsys, *flags, "--decoder", "my_parts:TinyDecoder")
    assert code == 2 and "--encoder / --decoder does not apply to --model vqvae" in err


@pytest.mark.slow
def test_model_of_your_own(plugin_dir, fake_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main(capsys, *train_flags(fake_data_dir, out), "--model", "my_parts:MyVAE")
    assert code == 0, err
    assert type(load_vae(str(out))[0]).__name__ == "MyVAE"
    assert model_class("vae").__name__ == "VAE"
    with pytest.raises(UserError, match="not a subclass of pyro_vae.LatentModel"):
        model_class("my_parts:StudentT")
    with pytest.raises(UserError, match="takes no arguments"):
        model_class("my_parts:MyVAE(x=1)")


BAD_SPECS = [
    (["--prior", "no_such_module:Prior"], "needs the module 'no_such_module'"),
    (["--prior", "my_parts:Nope"], "has no attribute 'Nope'"),
    (["--prior", "my_parts:StudentT(dof=3)"], "unexpected keyword argument 'dof'"),
    (["--prior", "my_parts:StudentT(z_dim=3)"], "z_dim comes from the run's settings"),
    (["--prior", "missing/file.py:Prior"], "which does not exist"),
    (["--prior", "studentt:3"], "unknown prior 'studentt'"),
    (["--likelihood", "poisson"], "unknown likelihood 'poisson'"),
    (["--encoder", "mlp"], "unknown encoder 'mlp'"),
    (["--model", "gan"], "unknown model 'gan'"),
    (["--model", "my_parts:not_a_module"], "not a subclass of pyro_vae.LatentModel"),
    (["--prior", "my_parts:not_a_module"], "not_a_module is not a subclass of torch.nn.Module"),
    (
        ["--prior", "os:system(command='touch marker')"],
        "system is not a subclass of torch.nn.Module",
    ),
]


@pytest.mark.parametrize("flags, message", BAD_SPECS)
def test_bad_specs_are_one_line_exit_2(plugin_dir, capsys, flags, message):
    code, err = run_main(capsys, "train", *flags)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_installed_factory_that_builds_the_wrong_thing(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    site = tmp_path / "site"
    site.mkdir()
    write_installed_package(site)
    monkeypatch.syspath_prepend(str(site))
    flags = train_flags(fake_data_dir, tmp_path / "run")
    code, err = run_main(capsys, *flags, "--prior", "broken")
    assert code == 2 and "built a str, not a Module" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_reload_without_the_plugin_names_the_missing_module(fake_data_dir, tmp_path):
    """A run whose plugin can no longer be imported: one line naming the module, exit 2."""
    (tmp_path / "gone_parts.py").write_text(PLUGIN_SOURCE)
    out = tmp_path / "run"
    flags = train_flags(fake_data_dir, out)[1:] + ["--prior", "gone_parts:StudentT"]
    command = [sys.executable, "-m", "pyro_vae", "train", *flags]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (tmp_path / "gone_parts.py").unlink()
    for argv in (["evaluate", str(out)], ["plot", str(out)]):
        done = subprocess.run(
            [sys.executable, "-m", "pyro_vae", *argv], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"cannot rebuild the model of {out}" in done.stderr
        assert "'gone_parts'" in done.stderr and "Traceback" not in done.stderr


def write_installed_package(site: Path) -> None:
    """A package as pip installs it: the module and a dist-info folder whose entry points add
    ``studentt`` to ``pyro_vae.priors`` and ``laplace`` to ``pyro_vae.likelihoods``."""
    (site / "studentt_plugin.py").write_text(PLUGIN_SOURCE)
    info = site / "studentt_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: studentt-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [pyro_vae.priors]
            studentt = studentt_plugin:StudentT
            broken = studentt_plugin:not_a_module

            [pyro_vae.likelihoods]
            laplace = studentt_plugin:LaplaceLikelihood
            """
        )
    )


@pytest.mark.slow
def test_installed_package_adds_names(fake_data_dir, tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    write_installed_package(site)
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "run"
    flags = train_flags(fake_data_dir, out) + ["--prior", "studentt:3", "--binarize", "none"]
    code, err = run_main(capsys, *flags, "--likelihood", "laplace(scale=0.25)")
    assert code == 0, err
    vae, config = load_vae(str(out))
    assert config.prior == "studentt:3" and vae.prior.df == 3  # ':3' fills the first free argument
    assert torch.allclose(vae.likelihood.scale, torch.full((784,), 0.25))
    # the names are listed when a name is unknown
    code, err = run_main(capsys, "train", "--prior", "students")
    assert code == 2 and "known: normal, mog, vamp, flow, studentt, broken" in err
    # and the command line of a fresh process sees them through the installed metadata
    command = [sys.executable, "-m", "pyro_vae", "evaluate", str(out), "--iw-samples", "2"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_code_prior_of_your_own_for_fit_prior(fake_data_dir, tmp_path, capsys):
    from pyro_vae.runs.code_prior import load_code_prior

    (tmp_path / "parts.py").write_text(PLUGIN_SOURCE)
    out = tmp_path / "run"
    flags = train_flags(fake_data_dir, out) + ["--model", "vqvae", "--codebook-size", "8"]
    assert run_main(capsys, *flags, "--code-dim", "4", "--z-dim", "4")[0] == 0
    spec = f"{tmp_path / 'parts.py'}:PositionCodes(init=0.5)"
    argv = ["fit-prior", str(out), "--prior", spec, "--epochs", "2", "--quiet"]
    assert main(argv) == 0
    assert "| parts.py-PositionCodes-init-0.5 |" in capsys.readouterr().out
    prior = load_code_prior(out, "parts.py-PositionCodes-init-0.5")  # rebuilt by name
    assert type(prior).__name__ == "PositionCodes" and not torch.all(prior.logits == 0.5)
