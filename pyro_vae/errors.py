"""The one exception type for mistakes a user can make (bad flags, bad data, bad run folders).

Command-line entry points turn it into a one-line message and exit code 2; library callers
can catch it like any other exception.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
