"""`python -m itmatch` and the `itmatch` command (also what `torchrun -m itmatch` starts on each rank)."""

import sys


def run() -> int:
    """Load the CLI and run it; a Ctrl-C while the libraries load ends with one line, not a traceback."""
    from itmatch.errors import stopped  # no library loaded yet

    try:
        from itmatch.cli import main
    except KeyboardInterrupt:  # nothing was written yet
        print(stopped("Ctrl-C"), file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
