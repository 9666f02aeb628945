"""SIGTERM (kill, systemd, SLURM, Kubernetes) and SIGUSR1 (a scheduler's warning) stop a run as
Ctrl-C does: the last completed epoch is saved, one line says how to resume, and the exit code
is 128 + the signal's number (143, 138)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_schedules import small_config

from pyro_vae import fit
from pyro_vae.cli.main import run_cli
from pyro_vae.errors import TrainingInterrupted
from pyro_vae.runs import fit as fit_module
from pyro_vae.runs.folder import Run

SIGNALS = [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)]
IDS = ["SIGTERM", "SIGUSR1"]


def send_to_self(signum: int) -> None:
    """Deliver ``signum`` to this process, once a handler is there to catch it (without one it
    would end the test run itself: then the assertion fails instead)."""
    assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    signal.raise_signal(signum)  # runs the Python handler before it returns
    raise AssertionError(f"{signal.Signals(signum).name} did not stop the job")


@pytest.mark.parametrize("signum, code", SIGNALS, ids=IDS)
def test_a_signal_in_an_epoch_saves_the_last_completed_one(
    fake_data_dir, tmp_path, monkeypatch, signum, code
):
    calls, real = [], fit_module.train_one_epoch

    def third_epoch_is_stopped(*args):
        calls.append(1)
        if len(calls) == 3:
            send_to_self(signum)
        return real(*args)

    monkeypatch.setattr(fit_module, "train_one_epoch", third_epoch_is_stopped)
    before = signal.getsignal(signum)
    out = tmp_path / "run"
    config = small_config(fake_data_dir, out, epochs=5, checkpoint_every=5)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(config)
    name = signal.Signals(signum).name
    assert stopped.value.exit_code == code
    assert str(stopped.value) == (
        f"stopped by {name} in epoch 3; epoch 2 is saved in {out}; "
        f"continue with: pyro-vae train --resume {out}"
    )
    assert Run(out).load_checkpoint()["epoch"] == 2  # no interval checkpoint was due
    assert signal.getsignal(signum) == before  # the handler is the program's again


@pytest.mark.parametrize("signum, code", SIGNALS, ids=IDS)
def test_a_signal_outside_training_is_one_line_and_its_exit_code(capsys, signum, code):
    assert run_cli(lambda: send_to_self(signum)) == code
    assert capsys.readouterr().err == f"pyro-vae: stopped by {signal.Signals(signum).name}\n"


def test_a_handler_of_the_programs_own_is_left_alone(fake_data_dir, tmp_path):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        assert run_cli(lambda: signal.raise_signal(signal.SIGUSR1)) == 0
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize(
    "signum, code",
    [
        pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
        pytest.param(signal.SIGUSR1, 138, id="SIGUSR1", marks=pytest.mark.slow),  # as in-process
    ],
)
def test_pyro_vae_train_sent_a_signal_saves_says_how_to_resume_and_resumes(
    fake_data_dir, tmp_path, signum, code
):
    out = tmp_path / "run"
    flags = ["--data-dir", str(fake_data_dir), "--limit-train", "50", "--limit-test", "20"]
    flags += ["--z-dim", "2", "--hidden-dims", "8", "--eval-every", "0", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path.cwd()))
    train = [sys.executable, "-m", "pyro_vae", "train", *flags]
    proc = subprocess.Popen(
        [*train, "--epochs", "100000", "--checkpoint-every", "100000", "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.csv"
    while proc.poll() is None and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 4
    ):
        time.sleep(0.05)  # until three epochs are logged (a header and three rows)
    proc.send_signal(signum)
    _, err = proc.communicate()
    assert proc.returncode == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert err.startswith(f"pyro-vae: stopped by {name} in epoch ")  # not an error
    assert err.endswith(f"continue with: pyro-vae train --resume {out}\n")
    # Rows are logged just before an epoch's state is kept: after three rows, epoch 2 at least
    # was completed, and only the signal can have saved it (no interval checkpoint was due).
    saved = Run(out).load_checkpoint()["epoch"]
    assert saved >= 2 and f"epoch {saved} is saved in {out}" in err
    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--resume", str(out)]
        + ["--epochs", str(saved + 1)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in Run(out).read_metrics()] == list(range(1, saved + 2))
