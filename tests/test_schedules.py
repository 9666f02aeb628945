"""Learning-rate schedules against their formulas, their state across resume, and --activation."""

import dataclasses
import math

import pytest
import torch
from test_cli import run_main
from torch import nn

from pyro_vae import TrainConfig, fit, load_vae
from pyro_vae.errors import TrainingInterrupted
from pyro_vae.infer.schedules import PLATEAU_PATIENCE, EpochSchedule, burda_factor
from pyro_vae.runs import fit as fit_module
from pyro_vae.runs.folder import Run


def optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)


def rates(schedule: EpochSchedule, epochs: int, val=None) -> list[float]:
    """The rate each of ``epochs`` epochs trains with."""
    out = []
    for epoch in range(epochs):
        out.append(schedule.lr())
        for opt in schedule.optimizers:
            opt.step()  # (no gradients: nothing moves) the order torch expects
        schedule.step(None if val is None else val[epoch])
    return out


def test_burda_schedule_is_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    expected = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    assert len(expected) == 3280  # the paper's total
    got = rates(EpochSchedule("burda", [optimizer()], 3280), 3290)
    assert got[:3280] == pytest.approx(expected, rel=1e-12)
    assert got[3280:] == pytest.approx([1e-4] * 10)  # later epochs keep the last rate
    assert [burda_factor(n) for n in (0, 1, 3, 4, 12, 13)] == pytest.approx(
        [1, 10 ** (-1 / 7), 10 ** (-1 / 7), 10 ** (-2 / 7), 10 ** (-2 / 7), 10 ** (-3 / 7)]
    )


def test_cosine_and_constant_schedules():
    got = rates(EpochSchedule("cosine", [optimizer(0.1)], 10), 10)
    assert got == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)])
    assert rates(EpochSchedule("constant", [optimizer(0.1)], 10), 5) == [0.1] * 5


def test_plateau_halves_after_patience_epochs_without_a_better_validation_elbo():
    val = [-100.0, -99.0] + [-99.5] * 30
    got = rates(EpochSchedule("plateau", [optimizer(0.1)], 30), 30, val)
    # best at epoch 2; epochs 3.. do not improve; after PATIENCE + 1 of them the rate halves
    first_cut = 2 + PLATEAU_PATIENCE + 1
    assert got[:first_cut] == [0.1] * first_cut
    assert got[first_cut] == pytest.approx(0.05)
    schedule = EpochSchedule("plateau", [optimizer(0.1)], 30)
    rates(schedule, 20, [None] * 20)  # epochs without a validation ELBO change nothing
    assert schedule.lr() == 0.1


def test_every_optimizer_of_em_is_scaled(fake_data_dir, tmp_path):
    config = small_config(fake_data_dir, tmp_path / "em", algo="em", lr_schedule="burda")
    config.epochs = 2
    run = fit(config)
    assert [row["lr"] for row in run.read_metrics()] == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])
    state = run.load_checkpoint()
    for name in ("e_optimizer", "m_optimizer"):
        lr = state["trainer"][name]["param_groups"][0]["lr"]
        assert lr == pytest.approx(1e-3 * 10 ** (-1 / 7))  # the third epoch's rate, both sides


def small_config(data_dir, out, **changes) -> TrainConfig:
    config = TrainConfig(
        data_dir=str(data_dir),
        limit_train=100,
        limit_test=20,
        epochs=4,
        z_dim=2,
        hidden_dims=(16,),
        eval_every=0,
        quiet=True,
        out=str(out),
    )
    return dataclasses.replace(config, **changes)


def fit_interrupted_then_resumed(monkeypatch, make_config, epoch: int):
    """``fit(make_config())`` stopped by Ctrl-C in ``epoch``, then resumed to its end; the
    resumed :class:`Run`. ``make_config(**changes)`` builds the run's settings."""
    calls, real = [], fit_module.train_one_epoch

    def interrupted(*args):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fit_module, "train_one_epoch", interrupted)
    with pytest.raises(TrainingInterrupted):
        fit(make_config())
    monkeypatch.setattr(fit_module, "train_one_epoch", real)
    config = make_config()
    return fit(make_config(resume=config.out))


@pytest.mark.parametrize(
    "changes",
    [
        {"lr_schedule": "burda"},
        {"lr_schedule": "plateau", "val_size": 20, "lr": 0.05},
        {"lr_schedule": "cosine", "activation": "tanh"},
    ],
    ids=["burda", "plateau", "cosine-tanh"],
)
def test_schedule_state_survives_resume_bitwise(fake_data_dir, tmp_path, changes, monkeypatch):
    """A run interrupted after epoch 2 of 4 and resumed ends as the uninterrupted one."""
    straight = fit(small_config(fake_data_dir, tmp_path / "straight", **changes))
    out = tmp_path / "resumed"
    resumed = fit_interrupted_then_resumed(
        monkeypatch, lambda **more: small_config(fake_data_dir, out, **changes, **more), 3
    )
    a, b = Run(straight.path).load_checkpoint(), Run(resumed.path).load_checkpoint()
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    assert a["schedule"] == b["schedule"]
    assert [r["lr"] for r in straight.read_metrics()] == [r["lr"] for r in resumed.read_metrics()]


def test_activation_reaches_every_mlp_layer(fake_data_dir, tmp_path):
    run = fit(small_config(fake_data_dir, tmp_path / "tanh", epochs=1, activation="tanh"))
    vae, config = load_vae(str(run.path))
    kinds = {type(m) for m in [*vae.encoder.modules(), *vae.decoder.modules()]}
    assert nn.Tanh in kinds and nn.ReLU not in kinds and config.activation == "tanh"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr-schedule", "step"], "invalid choice: 'step'"),
        (["--activation", "gelu"], "invalid choice: 'gelu'"),
        (["--lr-schedule", "plateau"], "--lr-schedule plateau watches the validation ELBO"),
        (["--activation", "tanh", "--arch", "conv"], "--activation applies to --arch mlp"),
        (["--activation", "tanh", "--model", "vqvae"], "--activation tanh does not apply"),
    ],
)
def test_bad_schedule_flags_give_one_line_and_exit_2(capsys, flags, message):
    code, err = run_main(capsys, "train", *flags)
    assert code == 2 and message in err and err.count("\n") == 1, err
