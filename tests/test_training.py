"""SVI training: it improves the ELBO, is deterministic, normalises per datum, writes a run."""

import csv
import json

import pyro
import pytest
import torch

from pyro_vae import KLWarmup, SVITrainer, TrainConfig, evaluate_elbo, fit, load_vae, setup
from pyro_vae.infer import svi as svi_module
from pyro_vae.infer.svi import adam, epoch_loop
from pyro_vae.runs.folder import Run


def small_config(data_dir, out, **overrides) -> TrainConfig:
    settings = dict(
        data_dir=str(data_dir),
        out=str(out),
        epochs=3,
        batch_size=50,
        z_dim=4,
        hidden_dims=(32,),
        lr=3e-3,
        quiet=True,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_training_raises_the_test_elbo(fake_data_dir, tmp_path, elbo):
    config = small_config(fake_data_dir, tmp_path / "run", elbo=elbo, num_particles=2)
    data, vae, trainer, rng = setup(config)
    before = evaluate_elbo(vae, data.test)["elbo"]
    losses = [trainer.train_epoch(data.train_epoch(rng), config.batch_size, rng) for _ in range(4)]
    after = evaluate_elbo(vae, data.test)["elbo"]
    assert after > before + 50  # nats per datum; an untrained model is far worse
    assert losses[-1] < losses[0]


def test_same_seed_same_metrics_and_different_seed_differs(fake_data_dir, tmp_path):
    def metrics(seed, name):
        run = fit(small_config(fake_data_dir, tmp_path / name, seed=seed, epochs=2))
        with run.metrics_path.open() as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    first, second, other = metrics(0, "a"), metrics(0, "b"), metrics(1, "c")
    assert first == second
    assert first != other


def test_train_epoch_reports_the_mean_loss_per_datum():
    """The epoch loss is the sum of per-item losses over all batches divided by N, also when
    the last batch is smaller."""
    vae = torch.nn.Linear(1, 1)
    vae.model = vae.guide = None
    vae.check_data = lambda x: None
    vae.after_update = lambda model_updated: None
    vae.check_algo = lambda algo: None
    vae.guide_parameters = lambda: iter([vae.weight])
    vae.model_parameters = lambda: iter([vae.bias])

    def objective(model, guide, x, kl_weight):
        return x.sum() + 0.0 * (vae.weight.sum() + vae.bias.sum())

    trainer = SVITrainer(vae, objective)
    x = torch.arange(10.0).unsqueeze(1)
    assert trainer.train_epoch(x, batch_size=4) == pytest.approx(4.5)
    assert trainer.step_count == 3


def test_epoch_loop_validates_the_first_step_only_and_restores_the_setting():
    seen = []

    def step(xb):
        seen.append(
            pyro.infer.is_validation_enabled() and torch.distributions.Distribution._validate_args
        )
        return xb.sum()

    x = torch.ones(10, 1)
    for setting in (True, False):
        seen.clear()
        with pyro.validation_enabled(setting):
            epoch_loop(step, x, batch_size=3)
            assert pyro.infer.is_validation_enabled() is setting
        assert seen == [setting, False, False, False]


@pytest.mark.parametrize("seconds, reads", [(0.0, 16), (3600.0, 1)])
def test_the_progress_bar_reads_the_loss_as_time_passes_not_every_20_steps(
    monkeypatch, seconds, reads
):
    """An epoch of 16 batches: with no time limit between reads every step updates the bar
    (so its last value is the epoch's mean, not the first batch's); with a long one, only the
    first step reads the device."""
    monkeypatch.setattr(svi_module, "PROGRESS_SECONDS", seconds)
    calls = []
    x = torch.arange(16.0)[:, None]
    epoch_loop(lambda xb: xb.sum(), x, 1, progress=True, status=lambda: calls.append(1) or {})
    assert len(calls) == reads


def test_adam_is_fused_on_cpu_and_takes_adams_step():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    v = torch.nn.Parameter(w.detach().clone())
    fused, plain = adam([w], 1e-2), torch.optim.Adam([v], lr=1e-2)
    assert fused.param_groups[0]["fused"] and adam([{"params": [v]}], 0.1).param_groups[0]["fused"]
    for _ in range(3):
        for p, opt in ((w, fused), (v, plain)):
            p.grad = None
            (p**2).sum().backward()
            opt.step()
    torch.testing.assert_close(w, v)
    assert not torch.equal(w, torch.zeros_like(w))


def test_kl_warmup_is_linear_and_never_zero():
    warmup = KLWarmup(beta=2.0, warmup_steps=4)
    assert [warmup(s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert KLWarmup(beta=0.5)(0) == 0.5


def test_a_run_writes_every_file(fake_data_dir, tmp_path):
    config = small_config(fake_data_dir, tmp_path / "run", epochs=2, val_size=100, kl_warmup=1.0)
    run = fit(config)
    saved = json.loads(run.config_path.read_text())
    assert saved["seed"] == 0 and saved["epochs"] == 2 and saved["hidden_dims"] == [32]
    assert {"torch", "pyro", "pyro_vae"} <= set(saved["versions"])
    with run.metrics_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {
        "train_loss",
        "test_elbo",
        "test_recon",
        "test_kl",
        "val_elbo",
        "kl_weight",
        "seconds",
    } <= set(rows[0])
    assert float(rows[0]["kl_weight"]) == 1.0 and float(rows[1]["val_elbo"]) < 0
    for name in ("reconstructions.png", "samples.png", "curves.png"):
        assert (run.figures_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    vae, loaded = load_vae(str(run.path))
    assert loaded.z_dim == 4
    data, _, _, _ = setup(config)
    torch.manual_seed(0)
    again = evaluate_elbo(vae, data.test, num_samples=50)["elbo"]
    assert again == pytest.approx(float(rows[-1]["test_elbo"]), abs=3.0)


def test_checkpoint_holds_what_resuming_needs(fake_data_dir, tmp_path):
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))
    state = Run(run.path).load_checkpoint()
    assert state["epoch"] == 1
    assert {"vae", "trainer", "rng", "config"} <= set(state)
    assert {"torch", "data", "numpy", "python"} <= set(state["rng"])
    assert len(state["trainer"]["optimizer"]["param_groups"]) == 2
