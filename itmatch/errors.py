"""The exception type for a user's mistake (bad file, bad option, bad data), and its picture-file kind.

The CLI prints its message on one line and exits non-zero without a traceback; anything else is a bug.
"""


class ItmatchError(Exception):
    """A problem with the user's input: the message names the file or field and says how to fix it."""


class UnreadableImage(ItmatchError):
    """A picture file that cannot be decoded (missing, truncated, not a picture)."""
