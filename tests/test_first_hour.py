"""The first hour of a new user (issue 37): mistakes found before minutes of work, messages that
say what to do next, a run from another machine that finds the data here, tables that line up."""

import json
import shutil

import pytest
from test_cli import run_main
from test_schedules import small_config

from pyro_vae import fit
from pyro_vae.cli.posthoc import eval_table
from pyro_vae.data import images as images_module


def test_a_taken_out_folder_is_refused_before_the_data_load(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    loads = []
    real = images_module.load_images
    monkeypatch.setattr(
        images_module, "load_images", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    code, err = run_main(
        capsys, "train", "--data-dir", str(fake_data_dir), "--out", str(taken), "--quiet"
    )
    assert code == 2 and err.count("\n") == 1
    assert "already holds files" in err and "--overwrite" in err and "--resume" in err
    assert loads == [] and (taken / "notes.txt").read_text() == "mine"


def test_resuming_a_run_stopped_before_its_first_checkpoint_says_how_to_start_again(
    fake_data_dir, tmp_path, capsys
):
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))
    run.checkpoint_path.unlink()  # as if killed while the first epoch ran
    code, err = run_main(capsys, "train", "--resume", str(run.path), "--epochs", "2")
    assert code == 2 and err.count("\n") == 1 and "no checkpoint to continue from" in err
    assert f"--config {run.config_path} --out {run.path} --overwrite" in err
    run.config_path.unlink()  # killed before even config.json was written
    code, err = run_main(capsys, "train", "--resume", str(run.path))
    assert code == 2 and "no config.json or checkpoint.pt" in err and "--overwrite" in err


def test_a_run_from_another_machine_reads_the_data_of_this_one(
    fake_data_dir, tmp_path, capsys, monkeypatch
):
    """The run recorded a data folder that is not here: PYRO_VAE_DATA_DIR applies."""
    elsewhere = tmp_path / "alice-data"
    shutil.copytree(fake_data_dir, elsewhere)
    run = fit(small_config(elsewhere, tmp_path / "run", epochs=1))
    shutil.rmtree(elsewhere)
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(fake_data_dir))
    code, err = run_main(capsys, "evaluate", str(run.path), "--iw-samples", "3", "--quiet")
    assert code == 0, err
    code, err = run_main(capsys, "train", "--resume", str(run.path), "--epochs", "2")
    assert code == 0, err
    assert json.loads(run.config_path.read_text())["data_dir"] is None  # what it read now


def test_the_evaluation_table_lines_up_with_the_not_applicable_rows():
    result = {
        "run": "runs/ae",
        "num_test": 10,
        "epoch": 1,
        "iw_samples": 5,
        "z_dim": 2,
        "recon_at_code": -70.0,
        "sq_error": 12.0,
        "seconds": 1.0,
        "not_applicable": {"log_likelihood": "improper prior", "mutual_info": "point mass"},
    }
    lines = eval_table(result).splitlines()
    assert any(line.startswith("log_likelihood n/a") for line in lines)
    columns = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1, lines  # every value starts in the same column


@pytest.mark.parametrize("flags", [["--iw-samples", "0"], ["--limit", "-1"]])
def test_evaluate_refuses_bad_numbers_before_loading_anything(flags, tmp_path, capsys):
    code, err = run_main(capsys, "evaluate", str(tmp_path), *flags)
    assert code == 2 and err.count("\n") == 1


def test_config_json_holds_the_settings_the_model_reads(fake_data_dir, tmp_path):
    """A VAE run records no VQ-VAE, TD-VAE or sparse-AE setting; a VQ-VAE run records its own
    and none of the others'; both still repeat with --config and resume."""
    vae = fit(small_config(fake_data_dir, tmp_path / "vae", epochs=1)).read_config()
    assert "z_dim" in vae and not {"codebook_size", "max_jump", "sparsity"} & set(vae)
    vq = fit(
        small_config(fake_data_dir, tmp_path / "vq", epochs=1, model="vqvae", codebook_size=8)
    ).read_config()
    assert vq["codebook_size"] == 8 and not {"max_jump", "sparsity"} & set(vq)
    assert run_main_ok("train", "--resume", str(tmp_path / "vq"), "--epochs", "2")


def run_main_ok(*argv: str) -> bool:
    from pyro_vae.cli.main import main

    return main(list(argv)) == 0
