"""The one exception type for a user's mistake (bad file, bad option, bad data).

The CLI prints its message on one line and exits non-zero without a traceback; anything else is a bug.
"""


class ItmatchError(Exception):
    """A problem with the user's input: the message names the file or field and says how to fix it."""
