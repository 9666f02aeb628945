"""Writing a run's files: whole, durable, with one-line errors; one writer per run folder.

Every file pyro-vae writes into a run folder goes through this module:

- :func:`write_file` writes a temporary file in the same folder, fsyncs it, renames it over the
  target and fsyncs the folder, so a reader (or a machine crash) sees the old file or the new
  one, never part of one; on any error the temporary file is removed and the old file is left
  as it was. The temporary file is created exclusively under a fresh random name, so nothing
  planted in the folder (a symbolic link to a file of the user's, a stale file or folder)
  redirects or blocks the write; the rename replaces a link at the target, never follows it.
- :func:`append_line` appends one line (``metrics.csv``) in place and fsyncs it; a failed write
  is cut back to where the file ended, so the file never holds half a line. It, the lock and
  :func:`check_writable` never follow a symbolic link or open anything but a regular file, and
  ``check_writable(folder, root)`` refuses a linked folder between ``root`` and ``folder``:
  every write into a run folder stays inside it.
- Reading: :func:`open_regular` opens only regular files (a FIFO, device or folder is one
  line, and opening never blocks); :func:`read_file` also refuses a file larger than
  :data:`READ_LIMITS` allows for its kind, before reading it.
- An OS error becomes a :class:`WriteFailed`: one line that names the file and the cause (no
  space, read-only, permission); the caller adds what is still safe.
- :class:`FolderLock`: ``pyro-vae train`` holds an OS lock on ``RUN/.lock`` for its whole life
  (``fcntl.flock``, released by the kernel when the process ends, even by SIGKILL), so a second
  writer is refused with the holder's pid; readers take no lock.
"""

import errno
import io
import os
import secrets
import stat
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
    "open_regular",
    "read_file",
    "READ_LIMITS",
]

EDQUOT = getattr(errno, "EDQUOT", -1)  # not on Windows
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "it is a symbolic link, and pyro-vae never writes through one",
}
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block an open
#: The most bytes a file read whole may hold, by kind: far above what pyro-vae writes (a
#: config.json holds about 2 kB, a metrics.csv about 200 bytes per epoch).
READ_LIMITS = {
    "config.json": 1 << 20,
    "recipe": 1 << 20,
    "eval.json": 1 << 20,
    "metrics.csv": 64 << 20,
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


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _not_regular(path: Path, mode: int) -> OSError:
    """The error of a run file that is not a regular file (WriteFailed says it in words)."""
    return OSError(errno.EINVAL, f"it is {_kind(mode)}, not a regular file", str(path))


def _open_regular_fd(path: Path, flags: int) -> int:
    """``os.open`` of a regular file that is not a symbolic link (ELOOP), without blocking on a
    FIFO; another kind of file is an OSError that says what it is."""
    fd = os.open(path, flags | NOFOLLOW | NONBLOCK, 0o644)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return fd


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path`` under a random name, created exclusively (O_EXCL: a
    link or file already at that name is never opened); returns its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
    for _ in range(100):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o644), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def write_file(path: str | Path, contents: Callable[[BinaryIO], object] | bytes | str) -> None:
    """Replace ``path`` whole with ``contents``: bytes, text (UTF-8), or a function that writes
    into a binary file (run in memory first, so the disk sees one plain write). The temporary
    file (a fresh name, created exclusively) is fsynced and renamed into place, then the folder
    is fsynced. Raises :class:`WriteFailed`; the old file is then unchanged and no temporary
    file remains."""
    path = Path(path)
    if callable(contents):
        buffer = io.BytesIO()
        contents(buffer)
        contents = buffer.getvalue()
    data = contents.encode() if isinstance(contents, str) else contents
    try:
        fd, tmp = _create_temporary(path)
    except OSError as exc:
        raise WriteFailed(path, exc) from None
    try:
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
        fd = _open_regular_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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


def check_writable(folder: str | Path, root: str | Path | None = None) -> None:
    """:class:`WriteFailed` unless a file can be created in ``folder`` (made if missing); a
    command checks this before long work whose result it must write. With ``root`` (a run
    folder holding ``folder``: its ``figures/``, ``priors/NAME/``), each folder below ``root``
    down to ``folder`` must be a real folder, not a symbolic link (WriteFailed naming it)."""
    folder = Path(folder)
    try:
        if root is None:
            folder.mkdir(parents=True, exist_ok=True)
        else:  # checked before each is made: nothing is made through a link
            inside = Path(root)
            inside.mkdir(parents=True, exist_ok=True)
            for part in folder.relative_to(inside).parts:
                inside = inside / part
                if inside.is_symlink():
                    raise WriteFailed(inside, OSError(errno.ELOOP, "a link", str(inside)))
                inside.mkdir(exist_ok=True)
        fd, probe = _create_temporary(folder / ".pyro-vae-write-test")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise WriteFailed(folder, exc) from None


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading in binary, if it is a regular file (a symbolic link to one
    is followed); a FIFO, device, socket or folder is a :class:`UserError` that names it, and
    is refused without blocking or reading. A missing file raises FileNotFoundError."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):  # checked before opening (a device is never opened), and after
        fd = os.open(path, os.O_RDONLY | NONBLOCK | getattr(os, "O_BINARY", 0))
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            if NONBLOCK:
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise UserError(f"refusing to read {path}: it is {_kind(mode)}, not a regular file")


def read_file(path: str | Path, kind: str) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), a ``kind`` of file (a key
    of :data:`READ_LIMITS`); a file larger than its kind's limit is a :class:`UserError`,
    before anything is read. A missing file raises FileNotFoundError."""
    limit = READ_LIMITS[kind]
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise UserError(
            f"refusing to read {path}: it is larger than the {limit >> 20} MiB allowed for a "
            f"{kind} ({max(size, len(data)):,} bytes)"
        )
    return data


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
            fd = _open_regular_fd(self.path, os.O_RDWR | os.O_CREAT)
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
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: one line, as for any write of the run
            os.close(fd)
            raise WriteFailed(self.path, exc) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
