"""The exception type for a user's mistake (bad file, bad option, bad data), its picture-file kind, a helper
that lists numbers in its messages, and the line a command stopped by a signal ends with.

The CLI prints its message on one line and exits non-zero without a traceback; anything else is a bug.
"""


class ItmatchError(Exception):
    """A problem with the user's input: the message names the file or field and says how to fix it."""


class UnreadableImage(ItmatchError):
    """A picture file that cannot be decoded (missing, truncated, not a picture)."""


def listed(numbers: list[int], shown: int = 10) -> str:
    """``numbers`` for a message: the first ``shown``, then how many more."""
    return ", ".join(map(str, numbers[:shown])) + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


def stopped(signal_name: str) -> str:
    """The one line a command stopped by ``signal_name`` (Ctrl-C, SIGTERM) ends with: its outputs are written
    under temporary names and renamed, so each is complete or absent."""
    return (f"stopped by {signal_name}; every output is complete or not written (a stopped `itmatch train` "
            "continues with --resume)")
