"""A run folder from elsewhere, probed as an attacker would (issue 32): every write stays inside
the folder (a victim file outside must not change, a marker outside must not appear), only
regular files of bounded size are read, and a full disk at the folder's lock is one line.

The attacker plants symbolic links (to a user's file, to a file that does not exist yet, to a
folder of the user's), FIFOs, devices, folders and huge sparse files where pyro-vae writes or
reads; the tests run the commands a user would run on the folder.
"""

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cli import run_main  # (exit code, stderr)
from test_schedules import small_config
from test_tdvae import td_config
from test_vqvae import vq_config

from pyro_vae import fit
from pyro_vae.errors import UserError
from pyro_vae.runs import files
from pyro_vae.runs.files import READ_LIMITS
from pyro_vae.runs.folder import Run

VICTIM = b"a file of the user's own, outside the run folder\n"


@pytest.fixture
def run(fake_data_dir, tmp_path) -> Run:
    """A finished one-epoch run (figures included), as a colleague would share it."""
    return fit(small_config(fake_data_dir, tmp_path / "run", epochs=1))


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


@pytest.fixture
def victim_folder(tmp_path) -> Path:
    path = tmp_path / "victim-folder"
    path.mkdir()
    (path / "mine.txt").write_bytes(VICTIM)
    return path


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(err: str) -> bool:
    return len(err.splitlines()) == 1 and "Traceback" not in err


# The commands that write into a run folder, and the temporary names their writes used.
WRITERS = {
    "evaluate": ["evaluate", "{run}", "--iw-samples", "2", "--limit", "4", "--quiet"],
    "plot": ["plot", "{run}"],
    "train --resume": ["train", "--resume", "{run}", "--epochs", "2"],
}
TEMPORARY = [
    ("evaluate", "eval.json.tmp"),
    ("plot", "figures/samples.png.tmp"),
    ("plot", "figures/curves.png.tmp"),
    ("train --resume", "config.json.tmp"),
    ("train --resume", "checkpoint.pt.tmp"),
]


def command(name: str, run: Run) -> list[str]:
    return [arg.format(run=run.path) for arg in WRITERS[name]]


@pytest.mark.parametrize("kind", ["link to a user's file", "dangling link", "stale folder"])
@pytest.mark.parametrize("writer, name", TEMPORARY)
def test_a_planted_temporary_file_neither_redirects_nor_breaks_a_write(
    run, victim, tmp_path, capsys, writer, name, kind
):
    planted = run.path / name
    marker = tmp_path / "marker"
    if kind == "link to a user's file":
        planted.symlink_to(victim)
    elif kind == "dangling link":
        planted.symlink_to(marker)
    else:  # what an old crash could leave, or an attacker: a folder where the file would go
        planted.mkdir()
    code, err = run_main(capsys, *command(writer, run))
    assert code == 0, err
    assert victim.read_bytes() == VICTIM and not marker.exists()
    final = run.path / name.removesuffix(".tmp")
    assert final.is_file() and not final.is_symlink()


def test_a_dangling_write_test_link_creates_nothing(run, tmp_path, capsys):
    marker = tmp_path / "marker"
    (run.path / ".pyro-vae-write-test").symlink_to(marker)
    code, err = run_main(capsys, *command("evaluate", run))
    assert code == 0, err
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["plot", "train --resume"])
def test_a_symlinked_figures_folder_is_refused_in_one_line(run, victim_folder, capsys, writer):
    shutil.rmtree(run.figures_dir)
    run.figures_dir.symlink_to(victim_folder, target_is_directory=True)
    before = listing(victim_folder)
    code, err = run_main(capsys, *command(writer, run))
    assert code != 0 and one_line(err), err
    assert f"{run.figures_dir}" in err and "symbolic link" in err
    assert listing(victim_folder) == before


def test_a_symlinked_tensorboard_folder_is_refused_in_one_line(run, victim_folder, capsys):
    pytest.importorskip("torch.utils.tensorboard")
    run.tensorboard_dir.symlink_to(victim_folder, target_is_directory=True)
    before = listing(victim_folder)
    code, err = run_main(capsys, *command("train --resume", run), "--tensorboard")
    assert code != 0 and one_line(err), err
    assert "tensorboard" in err and "symbolic link" in err
    assert listing(victim_folder) == before


@pytest.mark.parametrize("name", ["config.json", "metrics.csv", "checkpoint.pt", ".lock"])
def test_resume_never_writes_through_a_symlinked_run_file(run, tmp_path, capsys, name):
    """The run's own file moved outside and linked back: resume must leave it as it was."""
    outside = tmp_path / f"outside-{name.lstrip('.')}"
    original = run.path / name
    if original.exists():
        original.rename(outside)
    else:  # .lock: a file of the user's
        outside.write_bytes(VICTIM)
    original.symlink_to(outside)
    before = outside.read_bytes()
    code, err = run_main(capsys, *command("train --resume", run))
    assert code != 0 and one_line(err), err
    assert str(original) in err and "symbolic link" in err
    assert outside.read_bytes() == before


@pytest.mark.parametrize("name", ["eval.json", "figures/curves.png"])
def test_a_symlinked_result_file_is_replaced_never_written_through(run, victim, capsys, name):
    writer = "evaluate" if name == "eval.json" else "plot"
    target = run.path / name
    target.unlink(missing_ok=True)
    target.symlink_to(victim)
    code, err = run_main(capsys, *command(writer, run))
    assert code == 0, err
    assert victim.read_bytes() == VICTIM
    assert target.is_file() and not target.is_symlink()


@pytest.fixture
def vq_run(fake_data_dir, tmp_path) -> Run:
    return fit(vq_config(fake_data_dir, tmp_path / "vq", epochs=1, limit_train=50, limit_test=20))


FIT_PRIOR = ["fit-prior", "{run}", "--prior", "uniform", "--quiet"]


@pytest.mark.parametrize("linked", ["priors", "priors/uniform"])
def test_fit_prior_refuses_a_symlinked_priors_folder(vq_run, victim_folder, capsys, linked):
    folder = vq_run.path / linked
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(victim_folder, target_is_directory=True)
    before = listing(victim_folder)
    code, err = run_main(capsys, *[a.format(run=vq_run.path) for a in FIT_PRIOR])
    assert code != 0 and one_line(err), err
    assert str(folder) in err and "symbolic link" in err
    assert listing(victim_folder) == before


@pytest.mark.parametrize("name", ["prior.pt.tmp", "eval.json.tmp", "samples.png.tmp"])
def test_fit_prior_writes_beside_planted_temporary_links(vq_run, victim, tmp_path, capsys, name):
    folder = vq_run.path / "priors" / "uniform"
    folder.mkdir(parents=True)
    (folder / name).symlink_to(victim)
    marker = tmp_path / "marker"
    (folder / "metrics.csv.tmp").symlink_to(marker)
    code, err = run_main(capsys, *[a.format(run=vq_run.path) for a in FIT_PRIOR])
    assert code == 0, err
    assert victim.read_bytes() == VICTIM and not marker.exists()
    assert (folder / name.removesuffix(".tmp")).is_file()


def test_compare_writes_beside_links_planted_in_its_folder(fake_data_dir, tmp_path, victim, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    for name in ("comparison.csv", "comparison.md.tmp", "comparison.png"):
        (out / name).symlink_to(victim)
    argv = ["compare", "--algo", "svi", "--data-dir", str(fake_data_dir), "--epochs", "1"]
    argv += ["--limit-train", "50", "--limit-test", "20", "--z-dim", "2", "--hidden-dims", "8"]
    code, err = run_main(capsys, *argv, "--eval-every", "0", "--out", str(out), "--quiet")
    assert code == 0, err
    assert victim.read_bytes() == VICTIM
    assert all((out / name).is_file() for name in ("comparison.csv", "comparison.png"))


@pytest.mark.slow
def test_the_rollouts_example_never_writes_through_a_link(fake_data_dir, tmp_path, victim):
    run = fit(td_config(fake_data_dir, tmp_path / "td", epochs=1))
    (run.path / "rollouts.json").symlink_to(victim)
    (run.path / "figures" / "rollouts.png.tmp").symlink_to(victim)
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "examples" / "tdvae_rollouts.py"), str(run.path)]
    command += ["--vae-epochs", "1", "--vae-sequences", "20", "--limit", "10", "--samples", "2"]
    env = dict(os.environ, PYTHONPATH=str(root))  # this checkout's pyro_vae
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # its digit classifier's cache

    def rollouts() -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=env)

    done = rollouts()
    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_bytes() == VICTIM
    assert not (run.path / "rollouts.json").is_symlink()
    shutil.rmtree(run.figures_dir)
    run.figures_dir.symlink_to(tmp_path, target_is_directory=True)
    done = rollouts()
    assert done.returncode == 4 and one_line(done.stderr), done.stderr
    assert "figures: it is a symbolic link" in done.stderr
    assert not (tmp_path / "rollouts.png").exists()


# --- reading: regular files only, of a bounded size ----------------------------------------


@contextmanager
def memory_cap(extra: int = 2 << 30):
    """Cap this process's heap at its current size plus ``extra`` while the block runs: a
    regression that read /dev/zero whole would end in MemoryError, not eat the machine."""
    status = Path("/proc/self/status")
    if not status.is_file():
        yield
        return
    data = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmData:"))
    used = int(data.split()[1]) * 1024
    old = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, old)


@contextmanager
def fifo_with_a_writer(path: Path):
    """A FIFO at ``path`` whose writer feeds a little text to whoever opens it for reading, so
    that a reader that wrongly follows it reads that and goes on instead of hanging the test."""
    os.mkfifo(path)

    def feed() -> None:
        try:
            with open(path, "wb") as f:
                f.write(b"epoch,train_loss\n1,1.0\n")
        except OSError:  # the reader closed it unread
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield
    finally:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting feeder finish
        feeder.join()
        os.close(reader)


def test_metrics_linked_to_dev_zero_is_refused_in_one_line(run, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    run.metrics_path.unlink()
    run.metrics_path.symlink_to("/dev/zero")
    with memory_cap():
        code, err = run_main(capsys, "plot", str(run.path))
    assert code == 2 and one_line(err), err
    assert f"{run.metrics_path}" in err and "not a regular file" in err


def test_metrics_as_a_fifo_is_refused_without_hanging(run, capsys):
    run.metrics_path.unlink()
    with fifo_with_a_writer(run.metrics_path):
        code, err = run_main(capsys, "plot", str(run.path))
    assert code == 2 and one_line(err), err
    assert "FIFO" in err and "not a regular file" in err


@pytest.mark.parametrize("command_name", ["evaluate", "plot", "train --resume"])
def test_a_checkpoint_that_is_a_fifo_is_refused(run, capsys, command_name):
    run.checkpoint_path.unlink()
    with fifo_with_a_writer(run.checkpoint_path):
        code, err = run_main(capsys, *command(command_name, run))
    assert code == 2 and one_line(err), err
    assert str(run.checkpoint_path) in err and "a FIFO, not a regular file" in err


def test_a_checkpoint_linked_to_a_device_is_refused(run, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    run.checkpoint_path.unlink()
    run.checkpoint_path.symlink_to("/dev/zero")
    with memory_cap():
        code, err = run_main(capsys, *command("evaluate", run))
    assert code == 2 and one_line(err), err
    assert "a character device, not a regular file" in err


def sparse(path: Path, size: int) -> None:
    """``path`` of ``size`` bytes, with no block on disk."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "name, argv",
    [
        ("metrics.csv", ["plot", "{run}"]),
        ("config.json", ["train", "--resume", "{run}", "--epochs", "2"]),
        ("config.json", ["train", "--config", "{run}/config.json", "--epochs", "1"]),
    ],
)
def test_an_oversized_run_file_is_refused_before_it_is_read(run, capsys, name, argv):
    sparse(run.path / name, READ_LIMITS[name] + 1)
    with memory_cap():
        code, err = run_main(capsys, *[a.format(run=run.path) for a in argv])
    assert code == 2 and one_line(err), err
    assert str(run.path / name) in err and "larger than" in err


def test_an_oversized_or_special_recipe_is_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    sparse(recipe, READ_LIMITS["recipe"] + 1)
    code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and one_line(err) and "larger than" in err, err
    recipe.unlink()
    with fifo_with_a_writer(recipe):
        code, err = run_main(capsys, "train", "--config", str(recipe))
    assert code == 2 and one_line(err) and "not a regular file" in err, err


# --- a full disk at the folder's lock ------------------------------------------------------


@pytest.mark.parametrize("where", ["creating the lock", "writing the pid"])
def test_a_new_run_on_a_full_disk_is_one_line(fake_data_dir, tmp_path, monkeypatch, capsys, where):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "creating the lock":
        real_open = os.open

        def no_inode(path, flags, *args, **kwargs):
            if str(path).endswith(".lock"):
                raise full
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(files.os, "open", no_inode)
    else:

        def no_block(fd, data):
            raise full

        monkeypatch.setattr(files, "_write_all", no_block)
    out = tmp_path / "new"
    argv = ["train", "--data-dir", str(fake_data_dir), "--limit-train", "50", "--limit-test", "20"]
    code, err = run_main(capsys, *argv, "--z-dim", "2", "--hidden-dims", "8", "--out", str(out))
    assert code == 4 and one_line(err), err
    assert f"cannot write {out / '.lock'}: no space left on the device" in err


def test_the_recorded_data_dir_is_read_safely(tmp_path):
    """``Run.data_dir`` (the examples' data folder): the recorded folder where it exists, None
    for a missing, damaged or foreign one, and a config.json that is no file is refused."""
    run = tmp_path / "run"
    run.mkdir()
    assert Run(run).data_dir() is None  # no config.json
    (run / "config.json").write_text(json.dumps({"data_dir": str(tmp_path)}))
    assert Run(run).data_dir() == str(tmp_path)
    (run / "config.json").write_text(json.dumps({"data_dir": str(tmp_path / "elsewhere")}))
    assert Run(run).data_dir() is None
    for damaged in ("{not json", "[1, 2]", json.dumps({"data_dir": 7})):
        (run / "config.json").write_text(damaged)
        assert Run(run).data_dir() is None, damaged
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")  # a read would block forever
    with pytest.raises(UserError, match="not a regular file"):
        Run(run).data_dir()
