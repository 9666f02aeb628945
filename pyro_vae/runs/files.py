"""Writing a run's files: whole, durable, with one-line errors; one writer per run folder.

Every file pyro-vae writes into a run folder goes through this module:

- :func:`write_file` writes a temporary file in the same folder, fsyncs it, renames it over the
  target and fsyncs the folder, so a reader (or a machine crash) sees the old file or the new
  one, never part of one; on any error the temporary file is removed and the old file is left
  as it was.
- :func:`append_line` appends one line (``metrics.csv``) in place and fsyncs it; a failed write
  is cut back to where the file ended, so the file never holds half a line.
- An OS error becomes a :class:`WriteFailed`: one line that names the file and the cause (no
  space, read-only, permission); the caller adds what is still safe.
- :class:`FolderLock`: ``pyro-vae train`` holds an OS lock on ``RUN/.lock`` for its whole life
  (``fcntl.flock``, released by the kernel when the process ends, even by SIGKILL), so a second
  writer is refused with the holder's pid; readers take no lock.
"""

import errno
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_vae.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no advisory locks; one writer is on the user)
    fcntl = None

__all__ = [
    "WriteFailed",
    "write_file",
    "write_torch",
    "append_line",
    "check_writable",
    "FolderLock",
]

EDQUOT = getattr(errno, "EDQUOT", -1)  # not on Windows
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class WriteFailed(UserError):
    """A file of a run could not be written; what was there before is unchanged."""

    exit_code = 4

    def __init__(self, path: Path, error: OSError, safe: str = "") -> None:
        self.path, self.error = Path(path), error
        self.cause = CAUSES.get(error.errno, error.strerror or str(error))
        self.safe = safe
        message = f"cannot write {path}: {self.cause}"
        super().__init__(f"{message}; {safe}" if safe else message)

    @property
    def no_space(self) -> bool:
        return self.error.errno in (errno.ENOSPC, EDQUOT)

    def explained(self, safe: str) -> "WriteFailed":
        """The same failure with ``safe`` (what is intact, what to do) added to its line."""
        return WriteFailed(self.path, self.error, safe)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the OS can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_file(path: str | Path, contents: Callable[[BinaryIO], object] | bytes | str) -> None:
    """Replace ``path`` whole with ``contents``: bytes, text (UTF-8), or a function that writes
    into a binary file (run in memory first, so the disk sees one plain write). The temporary
    file is fsynced and renamed into place, then the folder is fsynced. Raises
    :class:`WriteFailed`; the old file is then unchanged and no temporary file remains."""
    path = Path(path)
    if callable(contents):
        buffer = io.BytesIO()
        contents(buffer)
        contents = buffer.getvalue()
    data = contents.encode() if isinstance(contents, str) else contents
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_torch(path: str | Path, obj: object) -> None:
    """:func:`write_file` of ``torch.save(obj)`` (serialized in memory: torch's own file writer
    turns a full disk into an unhelpful RuntimeError)."""
    import torch

    write_file(path, lambda f: torch.save(obj, f))


def append_line(path: str | Path, text: str) -> None:
    """Append ``text`` (whole lines) to ``path`` and fsync it; on failure the file is cut back
    to its old end. Raises :class:`WriteFailed`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WriteFailed(path, exc) from None
    try:
        end = os.fstat(fd).st_size
        try:
            _write_all(fd, text.encode())
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, end)
            raise WriteFailed(path, exc) from None
    finally:
        os.close(fd)


def check_writable(folder: str | Path) -> None:
    """:class:`WriteFailed` unless a file can be created in ``folder`` (made if missing); a
    command checks this before long work whose result it must write."""
    folder = Path(folder)
    probe = folder / ".pyro-vae-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644))
        probe.unlink()
    except OSError as exc:
        raise WriteFailed(folder, exc) from None


class FolderLock:
    """An exclusive OS lock on ``folder/.lock`` held until :meth:`release` (or process end)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise a :class:`UserError` naming the process that holds it."""
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteFailed(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            folder = self.path.parent
            raise UserError(
                f"{folder} is being written by another pyro-vae process (pid {holder}); a run "
                "folder has one writer: wait for it to end, or stop it and run "
                f"pyro-vae train --resume {folder}"
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            print(
                f"pyro-vae: warning: cannot lock {self.path} ({exc.strerror}); make sure no "
                "other process writes this run folder",
                file=sys.stderr,
            )
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
