"""Early stopping and the best checkpoint, settings from files (--config), TensorBoard logging
and the progress of long commands."""

import json
import math

import pytest
import torch
from test_cli import run_main
from test_schedules import fit_interrupted_then_resumed, small_config

from pyro_vae import fit
from pyro_vae.cli.main import parse_train_config
from pyro_vae.runs.early_stopping import BestEpoch

# A high rate on 100 images: the validation ELBO peaks within a few epochs, then wanders.
STOPPING = {"val_size": 40, "lr": 0.05, "early_stopping": 2, "epochs": 30}


def test_best_epoch_counts_epochs_since_the_best():
    best = BestEpoch()
    improved = [best.update(e, v) for e, v in enumerate([-5.0, -4.0, None, -4.5, math.nan], 1)]
    assert improved == [True, True, False, False, False]
    assert (best.best_epoch, best.best_elbo, best.last_epoch) == (2, -4.0, 5)
    assert best.stale(3) and not best.stale(4) and not best.stale(None)
    copy = BestEpoch()
    copy.load_state_dict(best.state_dict())
    assert copy == best


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_it(fake_data_dir, tmp_path):
    run = fit(small_config(fake_data_dir, tmp_path / "run", **STOPPING))
    rows = run.read_metrics()
    val = [r["val_elbo"] for r in rows]
    best_epoch = 1 + max(range(len(val)), key=val.__getitem__)
    assert len(rows) < STOPPING["epochs"], "the run should have stopped early"
    assert len(rows) == best_epoch + STOPPING["early_stopping"]
    assert all(v < val[best_epoch - 1] for v in val[best_epoch:])
    best, last = run.load_checkpoint("best"), run.load_checkpoint()
    assert best["epoch"] == best_epoch and last["epoch"] == len(rows)
    assert best["best"]["best_elbo"] == pytest.approx(val[best_epoch - 1], rel=1e-9)
    assert not all(torch.equal(best["vae"][k], last["vae"][k]) for k in best["vae"])


def test_early_stopping_state_survives_resume_bitwise(fake_data_dir, tmp_path, monkeypatch):
    straight = fit(small_config(fake_data_dir, tmp_path / "straight", **STOPPING))
    out = tmp_path / "resumed"
    resumed = fit_interrupted_then_resumed(
        monkeypatch, lambda **more: small_config(fake_data_dir, out, **STOPPING, **more), 4
    )
    assert straight.read_metrics()[-1]["epoch"] == resumed.read_metrics()[-1]["epoch"]
    for which in ("last", "best"):
        a, b = straight.load_checkpoint(which), resumed.load_checkpoint(which)
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"]
        assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])


def test_a_stopped_run_resumes_only_with_more_patience(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run", **STOPPING))
    stopped = len(run.read_metrics())
    code, err = run_main(capsys, "train", "--resume", str(run.path), "--epochs", "40")
    assert code == 2 and "the run stopped after epoch" in err and len(err.splitlines()) == 1
    assert run_main(capsys, "train", "--resume", str(run.path), "--early-stopping", "100")[0] == 0
    assert len(run.read_metrics()) == STOPPING["epochs"] > stopped


def test_evaluate_and_plot_take_the_best_checkpoint(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run", **STOPPING))
    best_epoch = run.load_checkpoint("best")["epoch"]
    args = ["--iw-samples", "5", "--limit", "10", "--quiet"]
    assert run_main(capsys, "evaluate", str(run.path), "--checkpoint", "best", *args)[0] == 0
    result = json.loads((run.path / "eval-best.json").read_text())
    assert result["epoch"] == best_epoch and result["checkpoint"] == "best"
    assert not (run.path / "eval.json").exists()
    assert run_main(capsys, "plot", str(run.path), "--checkpoint", "best")[0] == 0
    assert (run.path / "figures-best" / "samples.png").is_file()


def test_best_checkpoint_needs_a_validation_set(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))
    assert not run.best_path.exists()
    code, err = run_main(capsys, "evaluate", str(run.path), "--checkpoint", "best")
    assert code == 2 and "has no best checkpoint" in err and len(err.splitlines()) == 1


def test_overwriting_a_run_drops_its_old_best_checkpoint(fake_data_dir, tmp_path):
    out = tmp_path / "run"
    fit(small_config(fake_data_dir, out, epochs=2, val_size=40))
    assert (out / "best.pt").is_file()
    run = fit(small_config(fake_data_dir, out, epochs=1, overwrite=True))
    assert not run.best_path.exists()


RECIPE = """# a recipe: TOML, the train flags' names with dashes or underscores
z-dim = 3
hidden_dims = [24, 12]
lr = 1  # an integer where a number is expected is fine
activation = "tanh"
epochs = 7
"""


def test_config_file_sits_between_the_defaults_and_the_flags(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    config = parse_train_config(["--config", str(recipe), "--epochs", "2", "--hidden-dims", "8"])
    assert (config.z_dim, config.lr, config.activation) == (3, 1.0, "tanh")  # from the file
    assert (config.epochs, config.hidden_dims) == (2, (8,))  # the flags win
    assert config.batch_size == 128  # the default where neither says
    assert isinstance(config.lr, float)


def test_a_runs_config_json_repeats_the_run(fake_data_dir, tmp_path):
    first = fit(small_config(fake_data_dir, tmp_path / "first", epochs=2, z_dim=3, seed=4))
    config = parse_train_config(
        ["--config", str(first.config_path), "--out", str(tmp_path / "again"), "--quiet"]
    )
    again = fit(config)
    a, b = first.load_checkpoint(), again.load_checkpoint()
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    differ = {k for k in a["config"] if a["config"][k] != b["config"][k]}
    assert differ == {"out"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("z-dim = ", "does not parse"),
        ("z_dims = 3", "unknown setting 'z_dims'"),
        ("epochs = 'ten'", "epochs must be an integer, got 'ten'"),
        ("hidden-dims = [1.5]", "hidden-dims must be a list of integers"),
        ("quiet = 1", "quiet must be true or false"),
        ("out = 'runs/x'", "'out' says where a run lives"),
        ("[train]\nepochs = 3", "[train] is a table"),
    ],
)
def test_bad_config_files_give_one_line_and_exit_2(capsys, tmp_path, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_config_file_errors_for_missing_files_and_resume(capsys, tmp_path):
    code, err = run_main(capsys, "train", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "no such file" in err
    (tmp_path / "r.toml").write_text("epochs = 2\n")
    args = ["train", "--config", str(tmp_path / "r.toml"), "--resume", str(tmp_path)]
    code, err = run_main(capsys, *args)
    assert code == 2 and "--config starts a new run" in err


def test_recipes_in_the_repository_parse(tmp_path):
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
    assert recipes, "recipes/ holds the published experiments' settings"
    for recipe in recipes:
        assert "source" in recipe.read_text().lower(), f"{recipe.name} names no source"
        parse_train_config(["--config", str(recipe)]).validate()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early-stopping", "5"], "--early-stopping watches the validation ELBO"),
        (["--early-stopping", "0"], "'0' is not a positive integer"),
        (["--checkpoint", "best"], "unrecognized arguments"),
    ],
)
def test_bad_stopping_flags_give_one_line_and_exit_2(capsys, flags, message):
    code, err = run_main(capsys, "train", "--epochs", "1", *flags)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_tensorboard_logs_every_metric_and_images_without_changing_training(
    fake_data_dir, tmp_path
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    changes = {"epochs": 3, "eval_every": 2}
    plain = fit(small_config(fake_data_dir, tmp_path / "plain", **changes))
    logged = fit(small_config(fake_data_dir, tmp_path / "logged", tensorboard=True, **changes))
    a, b = plain.load_checkpoint(), logged.load_checkpoint()
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    events = EventAccumulator(str(logged.tensorboard_dir))
    events.Reload()
    rows = logged.read_metrics()
    for name in ("train_loss", "test_elbo", "test_iwae", "active_units"):
        logged_values = [(e.step, e.value) for e in events.Scalars(name)]
        expected = [(int(r["epoch"]), r[name]) for r in rows if math.isfinite(r[name])]
        assert [s for s, _ in logged_values] == [s for s, _ in expected]
        assert [v for _, v in logged_values] == pytest.approx([v for _, v in expected], rel=1e-6)
    for name in ("reconstructions", "samples"):
        assert [e.step for e in events.Images(name)] == [2, 3]  # the evaluated epochs


def test_evaluate_shows_a_progress_bar_unless_quiet(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))
    args = ["evaluate", str(run.path), "--iw-samples", "5", "--limit", "10"]
    code, err = run_main(capsys, *args)
    # tqdm, erased at the end; it counts importance samples (10 images x 5), so a large K shows
    # its rate and the time left within the first images
    assert code == 0 and "L_5 over 10 images:" in err and "/50.0 [" in err and "samples/s" in err
    code, err = run_main(capsys, *args, "--quiet")
    assert code == 0 and err == ""


def test_each_epoch_line_says_the_time_left(fake_data_dir, tmp_path, capsys):
    fit(small_config(fake_data_dir, tmp_path / "run", epochs=2, quiet=False))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " left " in ln]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert lines[-1].endswith("left 0:00:00")
