"""The compiled training step (pyro_vae/infer/compiled.py): the same numbers as the eager step
for fixed draws, EM's frozen groups bitwise frozen, one line for a model it cannot trace, and
``--resume`` bitwise exact with ``--compile on``; ``--compile auto`` settled once per run.

Compiling a graph of these tiny networks takes a few seconds (tens on a cold inductor cache),
so the tests share few shapes.
"""

import copy
import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_cli import run_main
from test_schedules import fit_interrupted_then_resumed, small_config

from pyro_vae import EMTrainer, SVITrainer, TrainConfig, build_vae, fit, make_objective
from pyro_vae.infer.compiled import AUTO_COMPILE_STEPS, CompiledLoss
from pyro_vae.models.vae import VAE
from pyro_vae.runs import fit as fit_module
from pyro_vae.runs.config_file import read_config_file
from pyro_vae.runs.fit import settle_compile

X = torch.bernoulli(torch.full((6, 784), 0.13), generator=torch.Generator().manual_seed(1))


def eager_loss_and_grads(vae, objective, x, kl_weight, params):
    loss = objective(vae.model, vae.guide, x, kl_weight)
    grads = torch.autograd.grad(loss / x.shape[0], params)
    return loss.detach(), grads


@pytest.mark.parametrize(
    "elbo, particles, prior, likelihood",
    [
        ("trace", 1, "normal", "bernoulli"),
        ("meanfield", 1, "normal", "bernoulli"),
        ("iwae", 3, "normal", "bernoulli"),
        ("trace", 2, "mog:3", "gaussian"),
    ],
)
def test_compiled_loss_and_gradients_equal_eager_for_fixed_draws(
    elbo, particles, prior, likelihood
):
    vae = build_vae(784, z_dim=2, hidden_dims=(8,), prior=prior, likelihood=likelihood)
    objective = make_objective(elbo, particles)
    params = list(vae.parameters())
    lines = []
    compiled = CompiledLoss(vae, objective, report=lines.append)
    with pyro.validation_enabled(False):
        for kl_weight in (0.25, 1.0):  # a tensor input of one graph, not a constant in it
            torch.manual_seed(3)
            loss, norm = compiled(X, X.shape[0], kl_weight, params)
            torch.manual_seed(3)
            want, grads = eager_loss_and_grads(vae, objective, X, kl_weight, params)
            torch.testing.assert_close(loss, want, rtol=1e-6, atol=0.0)
            for p, g in zip(params, grads, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4 * g.abs().max().item())
            want_norm = torch.nn.utils.get_total_norm(grads)
            torch.testing.assert_close(norm, want_norm, rtol=1e-4, atol=0.0)
    assert len(lines) == 1 and lines[0].startswith(
        "compiled the training step for minibatches of 6 in "
    )
    assert compiled.reason is None and len(compiled._graphs) == 1


def trainer_steps(make_trainer, compile: bool, batches) -> tuple:
    """Losses and final parameters of a trainer stepping through ``batches`` under seed 5."""
    trainer = make_trainer(compile)
    torch.manual_seed(5)
    with pyro.validation_enabled(False):
        losses = torch.stack([trainer.step(xb) for xb in batches])
    return trainer, losses, [p.detach().clone() for p in trainer.vae.parameters()]


def test_svi_trainer_compiled_takes_the_eager_steps_and_compiles_each_shape_once():
    """KL warm-up changes the weight every step; the last, smaller batch has its own graph."""
    vae = build_vae(784, z_dim=2, hidden_dims=(8,))
    lines = []

    def make(compile):
        return SVITrainer(
            copy.deepcopy(vae),
            make_objective("trace"),
            lr=0.01,
            kl_weight=lambda step: 0.2 * (step + 1),
            clip_norm=50.0,
            compile=compile,
            report=lines.append,
        )

    batches = [X[:4], X[2:], X[:2], X[1:5], X[4:]]
    eager = trainer_steps(make, False, batches)
    compiled = trainer_steps(make, True, batches)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-6, atol=0.0)
    for a, b in zip(compiled[2], eager[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [line.split(" in ")[0].split()[-1] for line in lines] == ["4", "2"]
    assert len(compiled[0].compiled._graphs) == 2


def test_em_steps_compiled_keep_the_frozen_group_bitwise_frozen():
    vae = build_vae(784, z_dim=2, hidden_dims=(8,))
    trainer = EMTrainer(vae, make_objective("trace"), e_rule="fixed", e_steps=2, compile=True)
    theta = [p.detach().clone() for p in trainer.model_params]
    with pyro.validation_enabled(False):
        trainer.e_step(X)
        assert all(torch.equal(p, q) for p, q in zip(trainer.model_params, theta, strict=True))
        assert all(p.grad is None for p in trainer.model_params)
        phi = [p.detach().clone() for p in trainer.guide_params]
        trainer.m_step(X)
    assert all(torch.equal(p, q) for p, q in zip(trainer.guide_params, phi, strict=True))
    assert all(p.grad is None for p in trainer.guide_params)
    assert not all(torch.equal(p, q) for p, q in zip(trainer.model_params, theta, strict=True))
    assert trainer.compiled.reason is None and len(trainer.compiled._graphs) == 2


class DataDependentVAE(VAE):
    """Decides in Python, from a value of the data, whether to score x."""

    def model(self, x, kl_weight=1.0):
        if x.sum() > 0:
            super().model(x, kl_weight)


class AlternatingVAE(VAE):
    """Adds a factor every other time its model runs: a different graph on every trace."""

    calls = 0

    def model(self, x, kl_weight=1.0):
        super().model(x, kl_weight)
        AlternatingVAE.calls += 1
        if AlternatingVAE.calls % 2:
            pyro.factor("extra", x.new_zeros(()))


class ParamStoreVAE(VAE):
    """Keeps a parameter in Pyro's parameter store rather than in a module."""

    def model(self, x, kl_weight=1.0):
        shift = pyro.param("shift", torch.zeros(()))
        self.register_modules("decoder", "prior", "likelihood")
        with pyro.plate("data", x.shape[0], dim=-1):
            with pyro.poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + shift).to_event(1), obs=x)


@pytest.mark.parametrize(
    "vae_class, reason",
    [
        (DataDependentVAE, "read a tensor's value in Python (.item(), if on a tensor) (at "),
        (AlternatingVAE, "its programs build a different graph each time they run"),
        (ParamStoreVAE, "pyro.param('shift') reads Pyro's parameter store"),
    ],
)
def test_a_model_the_tracer_cannot_follow_runs_eagerly_and_says_why_once(vae_class, reason):
    vae = build_vae(784, z_dim=2, hidden_dims=(8,), vae_class=vae_class)
    lines = []

    def make(compile):
        return SVITrainer(
            copy.deepcopy(vae), make_objective("trace"), compile=compile, report=lines.append
        )

    eager = trainer_steps(make, False, [X, X, X])
    fallen_back = trainer_steps(make, True, [X, X, X])
    assert len(lines) == 1 and lines[0].startswith("--compile: running the training step eagerly")
    assert reason in lines[0] and "\n" not in lines[0]
    assert fallen_back[0].compiled.reason in lines[0]
    if vae_class is not AlternatingVAE:  # its eager runs alternate with the traces' calls
        assert torch.equal(fallen_back[1], eager[1])
        assert all(torch.equal(a, b) for a, b in zip(fallen_back[2], eager[2], strict=True))


@pytest.mark.slow  # three runs, two graphs each: about a minute
def test_compile_on_resumes_bitwise(fake_data_dir, tmp_path, monkeypatch, capsys):
    """A compiled run interrupted in epoch 2 of 3 and resumed ends as the uninterrupted one
    (minibatches of 32 and a last one of 4 after each epoch's first, eager, step)."""
    changes = {"compile": "on", "batch_size": 32, "epochs": 3, "kl_warmup": 2.0}
    straight = fit(small_config(fake_data_dir, tmp_path / "straight", quiet=False, **changes))
    said = [line for line in capsys.readouterr().out.splitlines() if "compile" in line]
    assert [line.split(" in ")[0].split()[-1] for line in said] == ["32", "4"]
    out = tmp_path / "resumed"
    resumed = fit_interrupted_then_resumed(
        monkeypatch, lambda **more: small_config(fake_data_dir, out, **changes, **more), 2
    )
    a, b = straight.load_checkpoint("last"), resumed.load_checkpoint("last")
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    for column in ("train_loss", "test_elbo", "kl_weight"):
        assert [r[column] for r in straight.read_metrics()] == [
            r[column] for r in resumed.read_metrics()
        ]


def test_compile_flag(capsys):
    code, err = run_main(capsys, "train", "--compile", "maybe")
    assert code == 2 and "invalid choice: 'maybe'" in err
    code, err = run_main(capsys, "train", "--compile", "on", "--algo", "mcem")
    assert code != 0 and err.strip().endswith("--algo mcem's run eagerly")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "settings, train_size, settled, said",
    [
        ({"epochs": 100}, 60_000, "on", "compiled steps (46,900 minibatch steps, at least the"),
        ({"epochs": 20}, 60_000, "off", "eager steps (9,380 minibatch steps, under the 25,000"),
        ({"epochs": 100, "algo": "em"}, 60_000, "on", "compiled steps (46,900 minibatch"),
        ({"epochs": 10**4, "algo": "mcem"}, 60_000, "off", "eager steps (--algo mcem steps"),
        ({"epochs": 10**5, "device": "cuda"}, 1, "off", "eager steps (the compiled step is"),
        ({"epochs": 10**4, "compile": "off"}, 60_000, "off", None),
        ({"epochs": 1, "compile": "on", "device": "cuda"}, 100, "on", None),
    ],
)
def test_compile_auto_compiles_long_cpu_runs_of_svi_and_em(
    settings, train_size, settled, said, capsys
):
    """epochs x minibatches of 128 against AUTO_COMPILE_STEPS; a given on or off is kept."""
    assert AUTO_COMPILE_STEPS == 25_000 and TrainConfig().compile == "auto"
    config = TrainConfig(**settings)
    settle_compile(config, train_size)
    assert config.compile == settled
    out = capsys.readouterr().out
    if said is None:
        assert out == ""
    else:
        assert out.count("\n") == 1 and f"pyro-vae: --compile auto: {said}" in out, out


def test_compile_auto_is_settled_when_the_run_is_created_and_kept_on_resume(
    fake_data_dir, tmp_path, monkeypatch, capsys
):
    """A short run stays eager when resumed with more epochs than would compile it, a long one
    compiled (from the CLI and from Python); the record of a run from before --compile
    (no such setting) resumes eagerly. Each epoch here is one minibatch, which Pyro's
    validation keeps eager, so nothing is compiled."""
    monkeypatch.setattr(fit_module, "AUTO_COMPILE_STEPS", 3)  # 100 images: one step an epoch
    short = fit(small_config(fake_data_dir, tmp_path / "short", epochs=2, quiet=False))
    assert "--compile auto: eager steps (2 minibatch steps, under the 3" in capsys.readouterr().out
    assert short.read_config()["compile"] == short.load_checkpoint()["config"]["compile"] == "off"
    assert run_main(capsys, "train", "--resume", str(short.path), "--epochs", "4")[0] == 0
    assert short.read_config()["compile"] == short.load_checkpoint()["config"]["compile"] == "off"
    long = fit(small_config(fake_data_dir, tmp_path / "long", epochs=3))
    assert long.read_config()["compile"] == "on"
    resumed = fit(small_config(fake_data_dir, tmp_path / "long", epochs=4, resume=str(long.path)))
    assert resumed.read_config()["compile"] == resumed.load_checkpoint()["config"]["compile"]
    assert resumed.read_config()["compile"] == "on"
    # an old run folder: its config.json has no compile setting
    settings = short.read_config()
    del settings["compile"]
    short.config_path.write_text(json.dumps(settings))
    assert TrainConfig.from_dict(settings).compile == "off"
    assert read_config_file(short.config_path)["compile"] == "off"
    assert run_main(capsys, "train", "--resume", str(short.path), "--epochs", "5")[0] == 0
    assert short.read_config()["compile"] == "off"
    # --compile auto given again to a resumed run is no conflict
    code, err = run_main(capsys, "train", "--resume", str(long.path), "--compile", "auto")
    assert code == 2 and "already completed 4 epochs" in err, err
