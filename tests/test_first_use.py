"""Rough edges a new user hit (issue 19): each now ends in one line, a sensible default or a
working figure, and never loses a finished epoch."""

import csv
import math
import sys

import pytest

from pyro_vae import TrainConfig, UserError, fit
from pyro_vae.errors import TrainingDiverged
from pyro_vae.runs import config as config_module
from pyro_vae.runs.config import AGGRESSIVE_VAL_SIZE

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))


def small(data_dir, out, **kwargs) -> TrainConfig:
    settings = dict(
        data_dir=str(data_dir),
        out=str(out),
        epochs=1,
        batch_size=50,
        z_dim=2,
        hidden_dims=(16,),
        quiet=True,
        eval_limit=50,
        eval_iw_samples=5,
    )
    return TrainConfig(**(settings | kwargs))


@pytest.mark.parametrize("flags", [["--resume", "NOT_A_RUN"], ["--resume", "RUN", "--z-dim", "7"]])
def test_examples_refuse_a_bad_resume_in_one_line(fake_data_dir, tmp_path, capsys, flags):
    import train_svi

    fit(small(fake_data_dir, tmp_path / "run"))
    flags = [
        f.replace("NOT_A_RUN", str(tmp_path)).replace("RUN", str(tmp_path / "run")) for f in flags
    ]
    with pytest.raises(SystemExit) as info:
        train_svi.main(flags)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_aggressive_holds_out_a_validation_set_by_default(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    assert TrainConfig(algo="em", e_rule="aggressive").validate().val_size == AGGRESSIVE_VAL_SIZE
    monkeypatch.setattr(config_module, "AGGRESSIVE_VAL_SIZE", 100)  # the fake set has 600
    config = small(fake_data_dir, tmp_path / "run", algo="em", e_rule="aggressive", quiet=False)
    run = fit(config)
    assert "holding out 100 training images for validation" in capsys.readouterr().out
    assert run.read_config()["val_size"] == 100


def test_a_one_dimensional_latent_gets_every_figure(fake_data_dir, tmp_path):
    run = fit(small(fake_data_dir, tmp_path / "run", z_dim=1))
    names = {p.name for p in run.figures_dir.iterdir()}
    assert {"manifold.png", "latent.png", "interpolation.png", "random_codes.png"} <= names


@pytest.mark.parametrize("field", ["limit_test", "eval_limit"])
def test_settings_that_would_fail_evaluation_are_refused_before_training(field):
    with pytest.raises(UserError, match="must be at least 2"):
        TrainConfig(**{field: 1}).validate()


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(fake_data_dir, tmp_path):
    config = small(fake_data_dir, tmp_path / "run", lr=1e30)
    with pytest.raises(TrainingDiverged) as info:
        fit(config)
    message = str(info.value)
    assert "in epoch 1" in message and "holds no checkpoint" in message and "epoch 0" not in message


@pytest.mark.slow
def test_mcem_epochs_without_evaluation_leave_blank_cells(fake_data_dir, tmp_path):
    config = small(
        fake_data_dir,
        tmp_path / "run",
        algo="mcem",
        epochs=2,
        eval_every=2,
        limit_train=60,
        limit_test=10,
        mc_warmup=1,
        mc_samples=1,
        mc_leapfrog=2,
        mc_eval_warmup=2,
        mc_eval_samples=2,
    )
    run = fit(config)
    with (run.path / "metrics.csv").open() as f:
        first = next(csv.DictReader(f))
    assert first["test_elbo"] == "" and "nan" not in ",".join(first.values())
    assert math.isfinite(run.read_metrics()[-1]["test_elbo"])
