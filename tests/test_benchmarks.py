"""The benchmark scripts keep working (quickest mode, synthetic data; no timing assertions)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_benchmark_runs_in_its_quickest_mode():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_training.py"),
            "--synthetic",
            "--limit-train",
            "512",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--compile",
            "on",
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| meanfield |" in proc.stdout and "| trace |" in proc.stdout
    assert "--compile on" in proc.stdout


@pytest.mark.slow
def test_step_benchmark_runs_in_its_quickest_mode():
    script = ROOT / "benchmarks" / "bench_step.py"
    command = [sys.executable, str(script), "--rounds", "1", "--steps", "1", "--threads", "1"]
    command += ["--particles", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = ("| pyro-vae as shipped |", "| hand-written, fused Adam |", "trace the guide")
    compiled = "| pyro-vae, compiled step (--compile on) |"
    rows += (compiled, "compiled step / hand-written step (fused")
    for row in rows + ("| pyro-vae, 2 particles, vectorized |", "2 particles, one trace each"):
        assert proc.stdout.count(row) == 2, row  # once per objective


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, row", [(["--samples", "20"], "| 20 "), (["--elbo-batch", "4"], "| ELBO, batch 4 ")]
)
def test_evaluation_benchmark_runs_in_its_quickest_mode(flags, row):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_evaluation.py"),
            "--synthetic",
            "--images",
            "10",
            *flags,
            "--threads",
            "1",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr  # it exits 1 if the two ways' numbers differ
    assert f"{row}| library |" in proc.stdout and f"{row}| by hand |" in proc.stdout
    assert "library / hand-written" in proc.stdout and "peak resident memory" in proc.stdout


@pytest.mark.slow
def test_models_benchmark_runs_in_its_quickest_mode():
    script = ROOT / "benchmarks" / "bench_models.py"
    command = [sys.executable, str(script), "--rounds", "1", "--steps", "1", "--threads", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| VQ-VAE stage 2, transformer prior step |" in proc.stdout and "TD-VAE" in proc.stdout


def test_durability_benchmark_runs_in_its_quickest_mode(tmp_path):
    script = ROOT / "benchmarks" / "bench_durability.py"
    command = [sys.executable, str(script), "--rounds", "2", "--images", "256", "--threads", "1"]
    command += ["--dir", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| the fsyncs |" in proc.stdout and "% of the epoch" in proc.stdout
