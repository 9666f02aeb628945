"""Checkpoints, exact resume, interruption, numerical faults and bad input."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S

from pyro_vae import SVITrainer, TrainConfig, UserError, build_vae, fit, load_vae, make_objective
from pyro_vae.cli.main import main
from pyro_vae.errors import TrainingDiverged
from pyro_vae.infer.svi import gradient_step
from pyro_vae.runs.folder import Run

FLAGS = ["--z-dim", "3", "--hidden-dims", "16", "--batch-size", "20", "--quiet"]


def train_cmd(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pyro_vae",
        "train",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        *FLAGS,
        *extra,
    ]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}


def metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def final_params(run_dir: Path) -> dict:
    return Run(run_dir).load_checkpoint()["vae"]


def wait_for_checkpoint(run_dir: Path, epoch: int, proc, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if Run(run_dir).load_checkpoint()["epoch"] >= epoch:
                return
        except (UserError, KeyError, EOFError, RuntimeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} appeared")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["svi", "em"])
def test_killed_and_resumed_run_equals_uninterrupted_run_bitwise(fake_data_dir, tmp_path, algo):
    extra = ["--epochs", "12", "--algo", algo, "--e-rule", "fixed", "--e-steps", "2"]
    reference = tmp_path / "reference"
    subprocess.run(
        train_cmd(fake_data_dir, reference, *extra),
        check=True,
        env=env(),
        capture_output=True,
        timeout=HANG_GUARD_S,
    )

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(fake_data_dir, run, *extra),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(run, 3, proc)
    proc.send_signal(signal.SIGKILL)  # during some later epoch
    proc.wait(timeout=HANG_GUARD_S)
    killed_at = Run(run).load_checkpoint()["epoch"]
    assert killed_at < 12, "the run finished before it could be killed"

    resumed = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--resume", str(run)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert resumed.returncode == 0, resumed.stderr
    ref, got = final_params(reference), final_params(run)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert metrics_rows(run) == metrics_rows(reference)  # no duplicated or missing rows


@pytest.mark.slow
def test_ctrl_c_saves_the_last_completed_epoch_and_exits_130(fake_data_dir, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(
            fake_data_dir,
            run,
            "--epochs",
            "2000",
            "--checkpoint-every",
            "10000",
            "--compile",
            "off",
        ),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a test run in the background of a shell inherits
        # SIGINT ignored, and so would the run (it finished all its epochs once that way)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + HANG_GUARD_S
    while (
        time.time() < deadline
        and len(metrics_rows(run) if (run / "metrics.csv").exists() else []) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"pyro-vae train --resume {run}" in err
    assert err.startswith("pyro-vae: interrupted") and "error" not in err  # asked for
    # No interval checkpoint was due: the last completed epoch was saved on SIGINT. Rows are
    # logged just before an epoch's state is kept, so the newest row may be one epoch ahead of
    # the saved state: after three rows, epoch 2 at least was completed and kept.
    saved = Run(run).load_checkpoint()["epoch"]
    assert saved >= 2
    assert int(metrics_rows(run)[-1]["epoch"]) in (saved, saved + 1)


def test_resume_appends_rows_and_can_extend_epochs(fake_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data-dir", str(fake_data_dir), "--out", str(out), *FLAGS]
    assert main([*base, "--epochs", "2"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "4", "--quiet"]) == 0
    assert [r["epoch"] for r in metrics_rows(out)] == ["1", "2", "3", "4"]
    assert Run(out).read_config()["epochs"] == 4
    capsys.readouterr()

    assert main(["train", "--resume", str(out), "--quiet"]) == 2  # nothing left to do
    assert "already completed 4 epochs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0.5"], "--lr 0.5 conflicts with the run's saved 0.001"),
        (["--hidden-dims", "8"], "--hidden-dims 8 conflicts with the run's saved 16"),
        (["--prior", "mog:3"], "--prior mog:3 conflicts with the run's saved normal"),
    ],
)
def test_resume_refuses_conflicting_flags(fake_data_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    main(["train", "--data-dir", str(fake_data_dir), "--out", str(out), *FLAGS, "--epochs", "1"])
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "3", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_checkpoint_is_one_line_and_nothing_is_overwritten(
    fake_data_dir, tmp_path, capsys, damage
):
    out = tmp_path / "run"
    main(["train", "--data-dir", str(fake_data_dir), "--out", str(out), *FLAGS, "--epochs", "1"])
    ckpt = out / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    else:
        ckpt.unlink()
    damaged = ckpt.read_bytes() if ckpt.exists() else None
    metrics = (out / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("is damaged" in err or "no checkpoint" in err)
    assert (ckpt.read_bytes() if ckpt.exists() else None) == damaged
    assert (out / "metrics.csv").read_text() == metrics


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_checkpoint_from_another_architecture_is_refused(fake_data_dir, tmp_path):
    out = tmp_path / "run"
    main(["train", "--data-dir", str(fake_data_dir), "--out", str(out), *FLAGS, "--epochs", "1"])
    state = Run(out).load_checkpoint()
    state["config"]["hidden_dims"] = [32]  # as if a checkpoint of a wider network
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(UserError, match="does not match"):
        load_vae(str(out))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(fake_data_dir, tmp_path, monkeypatch):
    fit_module = sys.modules["pyro_vae.runs.fit"]  # the attribute pyro_vae.fit is the function

    real = fit_module.make_objective
    calls = {"n": 0}

    def poisoned(name, num_particles=1):
        loss = real(name, num_particles)

        def wrapped(*args, **kwargs):
            calls["n"] += 1
            value = loss(*args, **kwargs)
            return value * float("nan") if calls["n"] > 45 else value  # 30 steps per epoch

        return wrapped

    monkeypatch.setattr(fit_module, "make_objective", poisoned)
    config = TrainConfig(
        data_dir=str(fake_data_dir),
        out=str(tmp_path / "run"),
        epochs=5,
        batch_size=20,
        z_dim=3,
        hidden_dims=(16,),
        quiet=True,
    )
    with pytest.raises(TrainingDiverged) as info:
        fit(config)
    message = str(info.value)
    assert "the loss became nan in epoch 2" in message and "checkpoint of epoch 1" in message
    assert "--clip-norm" in message and info.value.exit_code == 3
    state = Run(tmp_path / "run").load_checkpoint()
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["vae"].values())
    assert [r["epoch"] for r in metrics_rows(tmp_path / "run")] == ["1"]


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro warns; the test checks the error
def test_nan_network_output_in_the_hot_loop_is_a_divergence_not_a_traceback():
    """Pyro's validation (on in the tests) checks the first minibatch of an epoch only; a NaN
    encoder output later must surface as TrainingDiverged, not as a distribution's ValueError."""
    torch.manual_seed(0)
    vae = build_vae(12, z_dim=2, hidden_dims=(8,))
    snapshots = []

    def poison(module, inputs, output):
        snapshots.append([p.detach().clone() for p in vae.parameters()])
        loc, scale = output
        return (loc * float("nan"), scale) if len(snapshots) > 1 else output

    vae.encoder.register_forward_hook(poison)
    trainer = SVITrainer(vae, make_objective("trace"))
    with pytest.raises(TrainingDiverged, match="the loss became nan"):
        trainer.train_epoch(torch.bernoulli(torch.full((40, 12), 0.5)), batch_size=10)
    assert trainer.step_count == 1 and len(snapshots) == 2
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], vae.parameters(), strict=True))


def test_gradient_step_clips_and_refuses_non_finite_gradients():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    gradient_step((100 * w).sum(), 1, [w], [opt], clip_norm=0.5)
    assert torch.allclose(w, torch.ones(3) - 0.5 / 3**0.5)
    v = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TrainingDiverged, match="gradient norm became"):
        # sqrt(v - 1) at v = 1: the loss is 0, its gradient infinite.
        gradient_step(torch.sqrt(v - 1.0).sum(), 1, [v], [torch.optim.SGD([v], lr=1.0)])
    assert torch.equal(v, torch.ones(3))


@pytest.mark.parametrize(
    "x, message",
    [
        ([[0.0] * 12], "must be a torch.Tensor"),
        (torch.zeros(4, 12, dtype=torch.uint8), "must be floating point"),
        (torch.zeros(4, 3, 4), "must have shape (N, 12)"),
        (torch.zeros(4, 10), "must have shape (N, 12)"),
        (torch.full((4, 12), float("nan")), "NaN"),
        (torch.full((4, 12), 0.5), "needs binary data"),
    ],
)
def test_bad_user_tensors_are_rejected_in_one_line(x, message):
    from pyro_vae import SVITrainer, evaluate_elbo, make_objective

    vae = build_vae(data_dim=12, z_dim=2, hidden_dims=(8,))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SVITrainer(vae, make_objective("trace")).train_epoch(x, batch_size=2)
    with pytest.raises(UserError):
        evaluate_elbo(vae, x)


def test_bad_reliability_flags(capsys):
    for flags in (["--checkpoint-every", "0"], ["--clip-norm", "-1"]):
        try:
            code = main(["train", *flags])
        except SystemExit as exc:
            code = exc.code
        assert code == 2 and capsys.readouterr().err.count("\n") == 1
