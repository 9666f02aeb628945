"""Faults a long run meets: a failed write at every write point (full disk, read-only, no
permission), a real full tmpfs and a read-only mount (where the test may mount), damaged run
files, and two writers on one run folder."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S
from test_cli import run_main
from test_schedules import small_config

from pyro_vae import fit
from pyro_vae.cli.main import main
from pyro_vae.cli.posthoc import evaluate_run, plot_run
from pyro_vae.runs import files
from pyro_vae.runs import fit as fit_module
from pyro_vae.runs.files import FolderLock, WriteFailed
from pyro_vae.runs.folder import Run

FAULTS = [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "the file system is read-only"),
    (errno.EACCES, "permission denied"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fail_writes(monkeypatch, code: int) -> None:
    """Every file write stops half-way with the OS error ``code``."""
    real = files._write_all

    def half(fd, data):
        real(fd, bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files, "_write_all", half)


@pytest.fixture
def two_epoch_run(fake_data_dir, tmp_path) -> Run:
    return fit(small_config(fake_data_dir, tmp_path / "run", epochs=2, val_size=20))


WRITE_POINTS = {
    "config.json": lambda run: run.write_config({"epochs": 3}),
    "metrics.csv": lambda run: run.log({"epoch": 3, "train_loss": 1.0}),
    "checkpoint.pt": lambda run: run.save_checkpoint({"epoch": 3}),
    "best.pt": lambda run: run.save_checkpoint({"epoch": 3}, "best"),
    "metrics.csv (repair)": lambda run: run.repair_metrics(1),
    "eval.json": lambda run: evaluate_run(run.path, iw_samples=2, limit=4),
    "reconstructions.png": lambda run: plot_run(run.path),
}


@pytest.mark.parametrize("code, cause", FAULTS, ids=["ENOSPC", "EROFS", "EACCES"])
@pytest.mark.parametrize("point", list(WRITE_POINTS))
def test_a_failed_write_changes_nothing_and_says_so_in_one_line(
    two_epoch_run, monkeypatch, point, code, cause
):
    run = two_epoch_run
    (run.path / "eval.json").write_text("{}\n")  # an earlier result that must survive
    before = snapshot(run.path)
    fail_writes(monkeypatch, code)
    with pytest.raises(WriteFailed) as failure:
        WRITE_POINTS[point](run)
    message = str(failure.value)
    assert "\n" not in message and cause in message and point.split()[0][:-4] in message
    assert snapshot(run.path) == before  # the earlier files, byte for byte
    assert not list(run.path.rglob("*.tmp"))


def test_a_full_disk_mid_run_names_the_intact_checkpoint_and_resume_goes_on(
    fake_data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    flags = ["--data-dir", str(fake_data_dir), "--limit-train", "100", "--limit-test", "20"]
    flags += ["--z-dim", "2", "--hidden-dims", "16", "--eval-every", "0", "--quiet"]
    calls, real = [], fit_module.train_one_epoch

    def third_epoch_fills_the_disk(*args):
        calls.append(1)
        if len(calls) == 3:
            fail_writes(monkeypatch, errno.ENOSPC)
        return real(*args)

    monkeypatch.setattr(fit_module, "train_one_epoch", third_epoch_fills_the_disk)
    code, err = run_main(capsys, "train", *flags, "--epochs", "4", "--out", str(out))
    assert code == 4 and len(err.splitlines()) == 1, err
    assert f"cannot write {out / 'metrics.csv'}: no space left on the device" in err
    assert (
        f"the checkpoint of epoch 2 is intact; free space and run pyro-vae train --resume {out}"
        in err
    )
    assert Run(out).load_checkpoint()["epoch"] == 2
    monkeypatch.undo()
    assert run_main(capsys, "train", "--resume", str(out), "--epochs", "4")[0] == 0
    assert [int(r["epoch"]) for r in Run(out).read_metrics()] == [1, 2, 3, 4]


def test_damaged_metrics_are_named_and_repaired_on_resume(two_epoch_run, capsys):
    run = two_epoch_run
    lines = run.metrics_path.read_text().splitlines()
    lines.insert(2, "garbage,not,a,row")
    lines[-1] = lines[-1].replace(lines[-1].split(",")[1], "oops", 1)
    run.metrics_path.write_text("\n".join(lines) + "\n")
    code, err = run_main(capsys, "plot", str(run.path))
    assert code == 2 and "metrics.csv is damaged: line 3 has 4 cells" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run.path), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "line 3 has 4 cells" in out and "no row for epoch(s) 2" in out
    assert [int(r["epoch"]) for r in run.read_metrics()] == [1, 3]  # epoch 2's row was damaged


def test_resume_starts_a_new_metrics_file_when_its_header_is_damaged(two_epoch_run, capsys):
    run = two_epoch_run
    run.metrics_path.write_text("\x00garbage\n" + run.metrics_path.read_text())
    code, err = run_main(capsys, "plot", str(run.path))
    assert code == 2 and "its first line is not the header" in err
    assert main(["train", "--resume", str(run.path), "--epochs", "3"]) == 0
    assert "rows of epochs 1-2 are lost" in capsys.readouterr().out
    assert [int(r["epoch"]) for r in run.read_metrics()] == [3]


def test_resume_rebuilds_a_damaged_config_from_the_checkpoint(fake_data_dir, tmp_path, capsys):
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1, z_dim=3))
    run.config_path.write_text("{ not json")
    code, err = run_main(capsys, "train", "--resume", str(run.path), "--epochs", "2")
    assert code == 0, err
    assert run.read_config()["z_dim"] == 3 and run.load_checkpoint()["epoch"] == 2


def test_a_second_writer_in_one_process_is_refused_with_the_holders_pid(tmp_path):
    lock = FolderLock(tmp_path).acquire()
    with pytest.raises(Exception, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    lock.release()
    FolderLock(tmp_path).acquire().release()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    lock = FolderLock(tmp_path).acquire()
    assert "cannot lock" in capsys.readouterr().err and lock.fd is None
    lock.release()


def _train(*argv: str, data_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYRO_VAE_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "pyro_vae", "train", *argv]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_rows(
    run: Run, n: int, process: subprocess.Popen, timeout: float = HANG_GUARD_S
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if run.metrics_path.exists() and len(run.metrics_path.read_text().splitlines()) > n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} rows in time: {process.communicate()}")


@pytest.mark.slow
def test_two_writers_one_is_refused_and_a_killed_writer_frees_the_lock(fake_data_dir, tmp_path):
    out = tmp_path / "run"
    flags = ["--limit-train", "200", "--limit-test", "20", "--z-dim", "2", "--eval-every", "0"]
    first = _train(*flags, "--epochs", "400", "--quiet", "--out", str(out), data_dir=fake_data_dir)
    run = Run(out)
    _wait_for_rows(run, 2, first)
    second = _train("--resume", str(out), "--epochs", "400", data_dir=fake_data_dir)
    _, err = second.communicate(timeout=HANG_GUARD_S)
    assert second.returncode == 2 and f"pid {first.pid}" in err.decode(), err
    _wait_for_rows(run, 4, first)
    first.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
    first.wait()
    epochs = [int(r["epoch"]) for r in run.read_metrics()]
    third = _train("--resume", str(out), "--epochs", str(epochs[-1] + 2), data_dir=fake_data_dir)
    _, err = third.communicate(timeout=HANG_GUARD_S)
    assert third.returncode == 0, err
    rows = [int(r["epoch"]) for r in run.read_metrics()]
    assert rows == list(range(1, epochs[-1] + 3))  # one row per epoch, in order


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'not root'})")


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder))
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_real_full_disk_keeps_the_last_checkpoint_and_leaves_no_temporary_file(
    fake_data_dir, small_tmpfs, capsys
):
    out = small_tmpfs / "run"
    flags = ["train", "--data-dir", str(fake_data_dir), "--limit-train", "100"]
    flags += ["--limit-test", "20", "--z-dim", "2", "--hidden-dims", "100", "--quiet"]
    flags += ["--eval-every", "0"]
    assert run_main(capsys, *flags, "--epochs", "2", "--out", str(out))[0] == 0
    size = (out / "checkpoint.pt").stat().st_size
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    (small_tmpfs / "filler").write_bytes(b"\0" * (free - size // 2))
    before = (out / "checkpoint.pt").read_bytes()
    code, err = run_main(capsys, "train", "--resume", str(out), "--epochs", "3")
    assert code == 4 and len(err.splitlines()) == 1, err
    assert "no space left on the device; the checkpoint of epoch 2 is intact" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.rglob("*.tmp"))
    (small_tmpfs / "filler").unlink()
    assert run_main(capsys, "train", "--resume", str(out), "--epochs", "3")[0] == 0
    assert [int(r["epoch"]) for r in Run(out).read_metrics()] == [1, 2, 3]


def test_a_read_only_run_is_read_and_its_results_go_elsewhere(fake_data_dir, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    run = fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))
    shared = tmp_path / "shared"
    shared.mkdir()
    _mount("--bind", str(run.path), str(shared))
    try:
        _mount("-o", "remount,ro,bind", str(shared))
        before = snapshot(shared)
        for command in (["evaluate", "--iw-samples", "2"], ["plot"]):
            code, err = run_main(capsys, command[0], str(shared), *command[1:])
            assert code == 4 and len(err.splitlines()) == 1, err
            assert "read-only" in err and "give --out DIR" in err
        code, err = run_main(capsys, "train", "--resume", str(shared), "--epochs", "2")
        assert code == 4 and "read-only" in err and len(err.splitlines()) == 1, err
        results = tmp_path / "results"
        args = ["--out", str(results)]
        assert run_main(capsys, "evaluate", str(shared), "--iw-samples", "2", *args)[0] == 0
        assert run_main(capsys, "plot", str(shared), *args)[0] == 0
        assert (results / "eval.json").is_file() and (results / "figures" / "samples.png").is_file()
        assert snapshot(shared) == before
    finally:
        subprocess.run(["umount", str(shared)], check=False)
