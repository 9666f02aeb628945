"""Exceptions for what a user can cause: bad flags or data, a diverging run, an interruption.

Command-line entry points turn each into a one-line message and the exit code it carries
(2 for mistakes in the input, 3 for a diverged run, 4 for a file that could not be written --
:class:`pyro_vae.runs.files.WriteFailed` --, 130 for Ctrl-C, 128 + N for signal N: 143 for
SIGTERM, 138 for SIGUSR1); library callers can catch them like any other exception.

SIGTERM (what ``kill``, systemd, SLURM and Kubernetes send before SIGKILL) and SIGUSR1 (a
scheduler's warning that time is nearly up) are handled as Ctrl-C is: while
:func:`stop_on_signals` is active they raise :class:`Stopped`, a KeyboardInterrupt, wherever
the program is, so training saves its last completed epoch and says how to resume.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "UserError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Stopped",
    "stop_on_signals",
    "check_count",
]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss or a gradient became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class TrainingInterrupted(UserError):
    """Ctrl-C (or SIGTERM, SIGUSR1) during training; the last completed epoch is checkpointed.
    ``exit_code``: 130 for Ctrl-C, 128 + the signal's number for another signal."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(KeyboardInterrupt):
    """A stopping signal (SIGTERM, SIGUSR1) received under :func:`stop_on_signals`; caught
    wherever Ctrl-C's KeyboardInterrupt is. ``exit_code``: 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.name)


#: The signals that stop a run as Ctrl-C does (SIGUSR1 is missing on Windows).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGUSR1 raise :class:`Stopped` in the main thread;
    the handlers before are restored after. A signal whose handler is not the default (the
    program's own, or ignored) is left alone, and so is everything outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            replaced[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)


def check_count(value: object, what: str) -> None:
    """A :class:`UserError` unless ``value`` is a positive integer: for counts a user gives in a
    spec (``mog:0``, ``transformer(num_layers=2.5)``), which reach constructors unchecked."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
