"""Models and guides written as plain Pyro programs (pyro_vae/models/user_program.py) and data
of one's own by path (pyro_vae/data/files.py), through every command.

- Pyro's example VAE (examples/own_model/pyro_vae_example.py, the class of Pyro's
  examples/vae/vae.py) through train (SVI, EM with each E-step rule), evaluate, plot, compare
  and --resume (bitwise equal to an uninterrupted run);
- probabilistic PCA as two plain functions on generated data from a .npy file: L_1000 of the
  trained model against the exact marginal log-likelihood of its learned parameters,
  N(mu, W W^T + sigma^2 I), and both SVI and EM against the Tipping-Bishop MLE;
- the phi/theta split, the plate check, every refused flag and every bad data file.
"""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import PyroProgramModel, fit_program, log_likelihood
from pyro_vae.cli.main import main
from pyro_vae.errors import UserError
from pyro_vae.infer.em import EMTrainer
from pyro_vae.infer.objectives import make_objective

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own_model"
sys.path.insert(0, str(EXAMPLES))

import ppca  # noqa: E402
import pyro_vae_example  # noqa: E402

VAE_SPEC = f"{EXAMPLES / 'pyro_vae_example.py'}:VAE(z_dim=3, hidden_dim=16)"
PPCA_SPEC = f"{EXAMPLES / 'ppca.py'}:PPCA"
SMALL = ["--limit-train", "120", "--limit-test", "40", "--batch-size", "40", "--quiet"]
SMALL += ["--eval-every", "1", "--eval-iw-samples", "5"]


def run(*argv: str) -> int:
    """``pyro-vae ARGV`` in this process; its exit code (argparse's too)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["vae"]


# --- Pyro's example VAE through every command ------------------------------------------------


@pytest.mark.parametrize(
    "algo", [["--algo", "svi"], ["--algo", "em", "--e-rule", "fixed", "--e-steps", "2"]]
)
def test_pyro_example_vae_trains_evaluates_plots(fake_data_dir, tmp_path, algo, capsys):
    out = tmp_path / "run"
    common = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, *SMALL, "--out", out]
    assert run("train", *common, "--epochs", "2", *algo) == 0
    assert run("evaluate", out, "--iw-samples", "10", "--quiet") == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["iwae"] >= result["elbo"] - 1.0  # L_10 is a tighter bound than the ELBO
    assert {"kl", "active_units", "mutual_info", "recon_at_code"} <= set(result)
    assert run("plot", out) == 0
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"curves.png", "reconstructions.png", "samples.png", "latent.png"} <= figures
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == VAE_SPEC
    # only what the run used: no model setting of the library's, no other model's own
    unread = {"z_dim", "hidden_dims", "prior", "likelihood", "arch", "codebook_size", "max_jump"}
    assert not unread & set(config), unread & set(config)
    assert run("train", "--config", out / "config.json", "--out", tmp_path / "again") == 0


def test_em_converge_and_aggressive_rules(fake_data_dir, tmp_path):
    for rule in ("converge", "aggressive"):
        out = tmp_path / rule
        args = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, *SMALL, "--out", out]
        args += ["--algo", "em", "--e-rule", rule, "--val-size", "40", "--epochs", "1"]
        assert run("train", *args) == 0
        rows = list(csv.DictReader((out / "metrics.csv").open()))
        assert len(rows) == 1 and int(float(rows[0]["inner_steps"])) > 0  # E-steps ran


def test_resume_is_bitwise(fake_data_dir, tmp_path):
    args = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, *SMALL, "--algo", "em"]
    args += ["--e-rule", "fixed", "--e-steps", "2"]
    assert run("train", *args, "--epochs", "3", "--out", tmp_path / "full") == 0
    assert run("train", *args, "--epochs", "2", "--out", tmp_path / "half") == 0
    assert run("train", "--resume", tmp_path / "half", "--epochs", "3", "--quiet") == 0
    full, resumed = checkpoint(tmp_path / "full"), checkpoint(tmp_path / "half")
    assert list(full) == list(resumed) and all(torch.equal(full[k], resumed[k]) for k in full)


def test_compare_trains_svi_and_em(fake_data_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, *SMALL, "--epochs", "1"]
    assert run("compare", *args, "--algo", "svi", "em", "--out", out) == 0
    assert (out / "comparison.md").read_text().count("\n") >= 4


# --- the split and the plate convention ----------------------------------------------------------


def test_split_of_pyro_example_vae():
    vae = pyro_vae_example.VAE(z_dim=3, hidden_dim=8)
    model = PyroProgramModel(vae, example=torch.bernoulli(torch.rand(10, 784)))
    phi = {id(p) for p in model.guide_parameters()}
    theta = {id(p) for p in model.model_parameters()}
    assert phi == {id(p) for p in vae.encoder.parameters()}
    assert theta == {id(p) for p in vae.decoder.parameters()}
    assert model.shared_parameters == [] and model.unused_parameters == []


class PlainAttributes(nn.Module):
    """Modules used without pyro.module, one shared by both programs, one unused."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = nn.Linear(4, 2), nn.Linear(2, 4)
        self.shared, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(self.shared(z)), 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.shared(self.enc(x)), 1.0).to_event(1))


def test_plain_attributes_shared_and_unused_parameters():
    model = PyroProgramModel(PlainAttributes(), example=torch.randn(8, 4))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in model.guide_parameters()} == {
        "program.enc.weight",
        "program.enc.bias",
    }
    assert {names[id(p)] for p in model.model_parameters()} >= {"program.dec.weight"}
    assert model.shared_parameters == ["program.shared.weight", "program.shared.bias"]
    assert model.unused_parameters == ["program.unused.weight", "program.unused.bias"]
    with pytest.raises(UserError, match="used by both the model and the guide"):
        EMTrainer(model, make_objective("trace"))


def no_plate_model(x):
    z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
    pyro.sample("x", dist.Normal(z.sum(), 1.0).expand(x.shape).to_event(2), obs=x)


def no_plate_guide(x):
    pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))


def test_missing_plate_is_one_line():
    with pytest.raises(UserError, match="inside one pyro.plate over the minibatch"):
        PyroProgramModel(no_plate_model, no_plate_guide, example=torch.randn(6, 3))


def test_guide_must_sample_the_model_latents():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    with pytest.raises(UserError, match="exactly the model's latent sites"):
        PyroProgramModel(ppca.model, guide, example=torch.randn(6, 5))


def test_failing_program_is_one_line():
    def broken(x):
        raise KeyError("oops")

    with pytest.raises(UserError, match="failed: KeyError"):
        PyroProgramModel(broken, ppca.guide, example=torch.randn(6, 5))


def test_pyro_param_stores_are_private():
    """Two models of the same functions in one process do not share W."""
    x = torch.randn(20, 5)
    first = PyroProgramModel(ppca.model, ppca.guide, example=x)
    second = PyroProgramModel(ppca.model, ppca.guide, example=x)
    assert first.params["W"] is not second.params["W"]
    assert "W" not in pyro.get_param_store()


# --- pPCA: exact log-likelihood and the Tipping-Bishop MLE -------------------------------------


D, K = 5, 2


def ppca_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, K, generator=torch.Generator().manual_seed(1))
    z, noise = torch.randn(n, K, generator=g), torch.randn(n, D, generator=g)
    return z @ w.T + 0.5 * noise + 1.0


def exact_log_likelihood(x: torch.Tensor, w, mu, sigma2) -> float:
    """Mean log N(x; mu, W W^T + sigma^2 I): pPCA's marginal, in closed form."""
    cov = w @ w.T + sigma2 * torch.eye(D)
    return torch.distributions.MultivariateNormal(mu, cov).log_prob(x).mean().item()


def tipping_bishop(x: torch.Tensor):
    """The maximum-likelihood W, mu, sigma^2 (Tipping and Bishop 1999, eqs. 7-8)."""
    mu = x.mean(0)
    lam, u = torch.linalg.eigh((x - mu).T @ (x - mu) / len(x))
    lam, u = lam.flip(0), u.flip(1)
    sigma2 = lam[K:].mean()
    return u[:, :K] * (lam[:K] - sigma2).sqrt(), mu, sigma2


def learned(model: PyroProgramModel):
    with pyro.get_param_store().scope(model._store):
        return tuple(pyro.param(n).detach() for n in ("W", "mu", "sigma"))


def test_ppca_from_npy_file_l1000_matches_exact_log_likelihood(tmp_path):
    path = tmp_path / "ppca.npy"
    np.save(path, ppca_data(400, 0).numpy())
    out = tmp_path / "run"
    args = ["--model", PPCA_SPEC, "--dataset", path, "--epochs", "6", "--lr", "0.05"]
    assert run("train", *args, "--batch-size", "50", "--quiet", "--out", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["test_split"] == 40 and config["binarize"] == "none"
    from pyro_vae.runs.fit import load_run

    model, data, _ = load_run(out)
    w, mu, sigma = learned(model)
    exact = exact_log_likelihood(data.test, w, mu, sigma**2)
    l_1000 = log_likelihood(model, data.test, num_samples=1000).mean().item()
    assert abs(l_1000 - exact) < 0.02  # measured: within 0.003 nats
    assert run("plot", out) == 0  # vectors: curves and the latent scatter, no images
    assert {p.name for p in (out / "figures").iterdir()} == {"curves.png", "latent.png"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo",
    [{"algo": "svi", "epochs": 30}, {"algo": "em", "e_rule": "fixed", "e_steps": 2, "epochs": 80}],
)
def test_ppca_functions_reach_the_tipping_bishop_mle(algo):
    """300 steps of SVI (800 M-steps of EM, each after 2 guide steps) bring the training
    log-likelihood within 0.05 nats per point of its maximum; L_1000 is the exact value of the
    learned parameters within 0.01 nats."""
    x, test = ppca_data(600, 0), ppca_data(200, 2)
    fitted = fit_program(
        ppca.model, ppca.guide, x, test=test, lr=0.05, batch_size=60, eval_every=0, **algo
    )
    w, mu, sigma = learned(fitted.model)
    best = exact_log_likelihood(x, *tipping_bishop(x))
    assert 0 <= best - exact_log_likelihood(x, w, mu, sigma**2) < 0.05
    l_1000 = log_likelihood(fitted.model, test, num_samples=1000).mean().item()
    assert abs(l_1000 - exact_log_likelihood(test, w, mu, sigma**2)) < 0.01


def test_fit_program_em_on_functions():
    fitted = fit_program(ppca.model, ppca.guide, ppca_data(200, 0), algo="em", epochs=2)
    assert len(fitted.history) == 2 and math.isfinite(fitted.history[-1]["test_elbo"])
    assert fitted.config.binarize == "none"
    with pytest.raises(UserError, match="z_dim does not apply"):
        fit_program(ppca.model, ppca.guide, ppca_data(50, 0), z_dim=3)


# --- refused flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        ["--prior", "mog:10"],
        ["--likelihood", "gaussian"],
        ["--arch", "conv"],
        ["--activation", "tanh"],
        ["--corrupt", "mask:0.5"],
        ["--z-dim", "3"],
        ["--hidden-dims", "20"],
        ["--gaussian-scale", "global"],
        ["--encoder", "torch.nn:Linear"],
        ["--algo", "mcem"],
        ["--codebook-size", "8"],
        ["--sparsity", "0.1"],
        ["--max-jump", "2"],
    ],
)
def test_model_settings_are_refused(fake_data_dir, tmp_path, flag, capsys):
    args = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, "--out", tmp_path / "r"]
    assert run("train", *args, *flag) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag[0] in err
    assert not (tmp_path / "r").exists()


def test_beta_applies_to_a_model_of_ones_own(fake_data_dir, tmp_path):
    """--beta scales the latent sites of both programs: it changes the training loss."""
    losses = []
    for beta in ("1", "0.1"):
        out = tmp_path / beta
        args = ["--model", VAE_SPEC, "--data-dir", fake_data_dir, *SMALL, "--epochs", "1"]
        assert run("train", *args, "--beta", beta, "--out", out) == 0
        losses.append(next(csv.DictReader((out / "metrics.csv").open()))["train_loss"])
    assert losses[0] != losses[1]


def test_a_plain_module_without_programs_is_refused(tmp_path, capsys):
    assert run("train", "--model", "torch.nn:Linear", "--out", tmp_path / "r") == 2
    assert "model(x) and guide(x)" in capsys.readouterr().err


# --- data files ----------------------------------------------------------------------


def test_npz_with_train_and_test_and_pt_images(tmp_path):
    from pyro_vae.data.files import load_file_data

    x = torch.rand(30, 1, 4, 6)
    np.savez(tmp_path / "d.npz", train=x.numpy(), test=x[:5].numpy())
    data = load_file_data(str(tmp_path / "d.npz"))
    assert data.train.shape == (30, 24) and data.test.shape == (5, 24)
    assert data.image_shape == (4, 6) and data.point_shape == (1, 4, 6)
    torch.save({"train": x[:, 0]}, tmp_path / "d.pt")
    data = load_file_data(str(tmp_path / "d.pt"), binarize="static")
    assert data.test_split == 3 and set(data.train.unique().tolist()) <= {0.0, 1.0}
    np.save(tmp_path / "v.npy", torch.rand(20, 12).numpy())
    assert load_file_data(str(tmp_path / "v.npy")).image_shape is None
    assert load_file_data(str(tmp_path / "v.npy"), image_shape=(3, 4)).image_shape == (3, 4)


def bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, part of the expected error)."""
    cases = {}

    def npy(name, array, expected):
        np.save(tmp / f"{name}.npy", array)
        cases[name] = (tmp / f"{name}.npy", expected)

    npy("integers", np.zeros((5, 3), dtype=np.int64), "floating point")
    npy("one_dim", np.zeros(5, dtype=np.float32), "one data point per row")
    npy("no_rows", np.zeros((0, 3), dtype=np.float32), "no data")
    npy("nan", np.array([[0.0, np.nan]] * 4, dtype=np.float32), "NaN or infinite")
    npy("inf", np.array([[0.0, np.inf]] * 4, dtype=np.float32), "NaN or infinite")
    npy("objects", np.array([[{"a": 1}]] * 4, dtype=object), "not a readable")
    (tmp / "empty.npy").write_bytes(b"")
    cases["empty"] = (tmp / "empty.npy", "is empty")
    (tmp / "damaged.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    cases["damaged_npz"] = (tmp / "damaged.npz", "not a readable")
    (tmp / "damaged.pt").write_bytes(b"\x80\x02garbage")
    cases["damaged_pt"] = (tmp / "damaged.pt", "not a readable")
    torch.save({"train": torch.zeros(4, 2), "labels": torch.zeros(4)}, tmp / "keys.pt")
    cases["keys"] = (tmp / "keys.pt", "'train' and (optionally) 'test'")
    torch.save({"train": torch.zeros(4, 2), "test": torch.zeros(4, 3)}, tmp / "shapes.pt")
    cases["shapes"] = (tmp / "shapes.pt", "test points have shape")
    torch.save([torch.zeros(4, 2)], tmp / "list.pt")
    cases["list"] = (tmp / "list.pt", "not an array or tensor")
    cases["missing"] = (tmp / "missing.npy", "does not exist")
    return cases


def test_every_bad_data_file_is_one_line(tmp_path, capsys):
    for name, (path, expected) in bad_files(tmp_path).items():
        code = run("train", "--model", PPCA_SPEC, "--dataset", path, "--out", tmp_path / "r")
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert expected in err and err.count("\n") == 0, (name, err)


def test_data_outside_the_support_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "grey.npy", (0.5 * np.ones((40, 784))).astype(np.float32))
    args = ["--model", VAE_SPEC, "--dataset", tmp_path / "grey.npy", "--out", tmp_path / "r"]
    assert run("train", *args) == 2
    assert "outside the support" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", (3 * np.ones((40, 784))).astype(np.float32))
    args = ["--model", VAE_SPEC, "--dataset", tmp_path / "wide.npy", "--binarize", "dynamic"]
    assert run("train", *args, "--out", tmp_path / "r") == 2
    assert "needs values in [0, 1]" in capsys.readouterr().err


def test_image_shape_must_fit(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((20, 12), dtype=np.float32))
    args = ["--model", PPCA_SPEC, "--dataset", tmp_path / "v.npy", "--image-shape", "5", "5"]
    assert run("train", *args, "--out", tmp_path / "r") == 2
    assert "holds 25 numbers" in capsys.readouterr().err
