"""Exceptions for what a user can cause: bad flags or data, a diverging run, an interruption.

Command-line entry points turn each into a one-line message and the exit code it carries
(2 for mistakes in the input, 3 for a diverged run, 4 for a file that could not be written --
:class:`pyro_vae.runs.files.WriteFailed` --, 130 for Ctrl-C); library callers can catch them
like any other exception.
"""

__all__ = ["UserError", "TrainingDiverged", "TrainingInterrupted", "check_count"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss or a gradient became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class TrainingInterrupted(UserError):
    """Ctrl-C during training; the last completed epoch is checkpointed."""

    exit_code = 130


def check_count(value: object, what: str) -> None:
    """A :class:`UserError` unless ``value`` is a positive integer: for counts a user gives in a
    spec (``mog:0``, ``transformer(num_layers=2.5)``), which reach constructors unchecked."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
