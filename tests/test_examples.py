"""The example scripts run end to end as a user runs them, and write every file of a run."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def run_example(
    script: str, *args: str, env_data_dir: Path | None = None, timeout: int = HANG_GUARD_S
):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if env_data_dir is not None:
        env["PYRO_VAE_DATA_DIR"] = str(env_data_dir)
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_train_svi_example_writes_a_complete_run(fake_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_example(
        "train_svi.py", "--epochs", "2", "--out", str(out), "--quiet", env_data_dir=fake_data_dir
    )
    assert proc.returncode == 0, proc.stderr
    assert "test ELBO" in proc.stdout
    for name in (
        "config.json",
        "metrics.csv",
        "checkpoint.pt",
        "figures/reconstructions.png",
        "figures/samples.png",
        "figures/curves.png",
    ):
        assert (out / name).is_file(), name
    with (out / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow
def test_train_svi_example_rejects_bad_flags_in_one_line(tmp_path):
    proc = run_example("train_svi.py", "--epochs", "-3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_real_mnist_subset_learns(real_data_dir, tmp_path):
    """Two epochs on 6000 real MNIST digits already give a test ELBO far above chance
    (784 log 2 = 543 nats for coin flips; an untrained decoder is near that)."""
    out = tmp_path / "run"
    proc = run_example(
        "train_svi.py",
        "--epochs",
        "2",
        "--limit-train",
        "6000",
        "--limit-test",
        "1000",
        "--out",
        str(out),
        "--quiet",
        env_data_dir=real_data_dir,
    )
    assert proc.returncode == 0, proc.stderr
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["test_elbo"]) > -200
    assert float(rows[-1]["test_elbo"]) > float(rows[0]["test_elbo"])


@pytest.mark.slow
def test_autoencoder_family_example_trains_every_model_and_writes_its_figures(
    fake_data_dir, tmp_path
):
    out = tmp_path / "family"
    args = ["--epochs", "1", "--limit-train", "200", "--iw-samples", "5", "--out", str(out)]
    proc = run_example("autoencoder_family.py", *args, "--quiet", env_data_dir=fake_data_dir)
    assert proc.returncode == 0, proc.stderr
    table = (out / "family.md").read_text()
    for name in ("ae", "sparse-high", "sparse-low", "denoising-ae", "vae", "denoising-vae"):
        assert f"| {name} |" in table and (out / name / "checkpoint.pt").is_file()
    for name in ("random-codes", "sparsity", "denoising"):
        assert (out / f"family-{name}.png").read_bytes()[:4] == b"\x89PNG"
    bad = run_example("autoencoder_family.py", "--corrupt", "mask:2")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_sparse_activations_example_tables_the_units_against_the_plain_ae(fake_data_dir, tmp_path):
    out = tmp_path / "sparse"
    args = ["--epochs", "1", "--limit-train", "200", "--rho", "0.1", "--out", str(out)]
    proc = run_example("sparse_activations.py", *args, env_data_dir=fake_data_dir)
    assert proc.returncode == 0, proc.stderr
    table = (out / "activations.md").read_text()
    assert table.strip() == proc.stdout.strip()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"ae", "sparse rho=0.1"}
    assert "| 30 |" in rows["sparse rho=0.1"] and "| n/a |" in rows["ae"]
    proc = run_example("sparse_activations.py", "--rho", "1.5", env_data_dir=fake_data_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.slow
def test_sample_quality_example_scores_each_prior_and_real_digits(
    fake_data_dir, tmp_path, monkeypatch
):
    import json
    import os

    run = tmp_path / "vq"
    train = [sys.executable, "-m", "pyro_vae", "train", "--model", "vqvae", "--codebook-size"]
    train += ["8", "--code-dim", "4", "--epochs", "1", "--quiet", "--out", str(run)]
    env = {**os.environ, "PYRO_VAE_DATA_DIR": str(fake_data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(train, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    fit = [sys.executable, "-m", "pyro_vae", "fit-prior", str(run), "--prior", "uniform"]
    done = subprocess.run([*fit, "categorical", "--quiet"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "scores.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # fake digits' classifier

    def scored(*flags: str) -> dict:
        proc = run_example(
            "sample_quality.py", str(run), *flags, "--out", str(out), env_data_dir=fake_data_dir
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())

    scores = scored("--count", "50", "--temperatures", "1", "0.5")
    labels = list(scores)
    assert labels[:2] == ["real test images (grey)", "real, binarized"]
    assert any("reconstructions" in label for label in labels)
    for prior in ("uniform", "categorical"):
        assert any(label.endswith(f"{prior} prior") for label in labels), prior
        assert any(label.endswith(f"{prior} prior, temperature 0.5") for label in labels), prior
    assert all(1.0 <= row["inception_score"] <= 10.0 for row in scores.values())
    bad = run_example("sample_quality.py", str(tmp_path / "missing"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    bad = run_example("sample_quality.py", str(run), "--temperatures", "0")
    assert bad.returncode == 2 and "--temperatures" in bad.stderr, bad.stderr
    bad = run_example(
        "sample_quality.py", str(run), "--priors", "pixelcnn", env_data_dir=fake_data_dir
    )
    assert bad.returncode == 2 and "no fitted prior 'pixelcnn'" in bad.stderr, bad.stderr
    samples = [
        label for label in scored("--count", "20", "--priors", "categorical") if "samples" in label
    ]
    assert samples and all(label.endswith("categorical prior") for label in samples), samples
