"""SVG drawings rendered to PNG with a bounded cost: one bad drawing fails alone, with its name, in seconds.

Two guards. (1) Entities: Adobe Illustrator exports declare internal entities (``<!ENTITY ns_svg "http://...">``)
that cairosvg's safe parser refuses, so their plain values are substituted first; an entity whose value refers to
other entities or holds markup (the "billion laughs" expansion: 500 bytes that grow into gigabytes) is refused, and
so is a substitution that would exceed :data:`MAX_EXPANDED` bytes. (2) The cost of rendering cannot be known
before (nested ``<use>``, filters, embedded pictures) and cairo's C code cannot be interrupted from Python, so
drawings are rendered in a separate process (:mod:`itmatch.features.svg_worker`, which loads only cairosvg) whose
address space is capped at :data:`MEMORY` bytes (``RLIMIT_AS``: works without root on Linux) and which is killed
when one drawing takes more than :data:`SECONDS` of CPU time (read from ``/proc``, so a busy machine does not make a
good drawing fail; where there is no ``/proc``, or past :data:`WALL_FACTOR` times that in wall-clock time, the
wall clock decides); the next drawing starts a new process.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from itmatch.errors import ItmatchError, UnreadableImage

#: Longest side, in pixels, at which SVG drawings are rendered (the detector looks at 300 x 300).
SVG_SIZE = 512
#: CPU seconds one drawing may take to render.
SECONDS = 10.0
#: Wall-clock limit, as a multiple of the CPU limit (a drawing that waits instead of computing).
WALL_FACTOR = 3.0
#: Address space, in bytes, of the rendering process.
MEMORY = 1 << 30
#: Largest SVG, in bytes, after internal entities are substituted.
MAX_EXPANDED = 16 << 20

_WORKER = Path(__file__).with_name("svg_worker.py")
_STARTUP_SECONDS = 60.0  # starting Python and loading cairo, on a busy machine

# A DOCTYPE with an internal subset, and the internal (quoted-value) entity declarations in it.
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*\[(?P<subset>.*?)\]\s*>", re.DOTALL)
_ENTITY = re.compile(rb"<!ENTITY\s+(?P<name>[\w.:-]+)\s+(?P<quote>[\"'])(?P<value>.*?)(?P=quote)\s*>", re.DOTALL)


class SvgRenderer:
    """Renders SVG bytes in a capped process: at most ``seconds`` per drawing and ``memory`` bytes of address space.
    Thread-safe (drawings are rendered one at a time)."""

    def __init__(self, seconds: float = SECONDS, memory: int = MEMORY) -> None:
        self.seconds, self.memory = seconds, memory
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()  # a forked child must not talk to its parent's renderer
        self._lock = threading.Lock()

    def render(self, data: bytes, path: str | os.PathLike) -> bytes:
        """PNG bytes of the drawing ``data`` (from ``path``, named in errors), longest side :data:`SVG_SIZE`,
        transparent background; raises :class:`UnreadableImage` when it cannot be rendered within the limits."""
        svg = expand_internal_entities(data, path)
        with self._lock:
            if self._owner != os.getpid():
                self._process, self._owner = None, os.getpid()
            try:
                process = self._process or self._start()
                answer = _ask(process, SVG_SIZE.to_bytes(4, "big") + svg, self.seconds)
            except TimeoutError:
                self.close()
                raise UnreadableImage(f"{path}: rendering this SVG took more than {self.seconds:g} s; simplify "
                                      "or drop it") from None
            except (EOFError, OSError):
                self.close()
                raise UnreadableImage(f"{path}: the SVG renderer died on this drawing (it may need more than "
                                      f"{self.memory >> 20} MiB); simplify or drop it") from None
        if answer[:2] != b"ok":
            raise UnreadableImage(f"{path}: cannot render this SVG ({answer[2:].decode(errors='replace')}); fix or "
                                  "drop it")
        return answer[2:]

    def close(self) -> None:
        """Stop the rendering process (a later :meth:`render` starts another)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-I", str(_WORKER), str(self.memory)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self._process = process
        deadline = time.monotonic() + _STARTUP_SECONDS
        try:
            ready = _read_frame(process, lambda: time.monotonic() > deadline)
        except (TimeoutError, EOFError):
            self.close()
            raise ItmatchError(f"the SVG renderer ({sys.executable} -I {_WORKER}) did not start; check that this "
                               "Python runs it") from None
        if ready != b"ok":
            self.close()
            raise ItmatchError(f"SVG needs cairosvg and the libcairo2 system library ({ready[2:].decode()}); run "
                               "`pip install cairosvg` and scripts/install_system_deps.sh")
        return process


def _ask(process: subprocess.Popen[bytes], request: bytes, seconds: float) -> bytes:
    """Send one request frame and wait for the answer frame while the process has used at most ``seconds`` of CPU
    time for it (and at most :data:`WALL_FACTOR` times that in wall-clock time)."""
    assert process.stdin is not None
    started = _cpu_seconds(process.pid)
    process.stdin.write(len(request).to_bytes(4, "big") + request)
    deadline = time.monotonic() + seconds * (WALL_FACTOR if started is not None else 1.0)

    def over() -> bool:
        used = _cpu_seconds(process.pid)
        return time.monotonic() > deadline or (used is not None and started is not None and used - started > seconds)

    return _read_frame(process, over)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process ``pid`` has used, from ``/proc``; None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_frame(process: subprocess.Popen[bytes], over: Callable[[], bool]) -> bytes:
    """One length-prefixed frame from the process; TimeoutError once ``over()``, EOFError when it ended."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    head = _read_exactly(fd, 4, over)
    return _read_exactly(fd, int.from_bytes(head, "big"), over)


def _read_exactly(fd: int, n: int, over: Callable[[], bool]) -> bytes:
    chunks, got = [], 0
    while got < n:
        if not select.select([fd], [], [], 0.1)[0]:
            if over():
                raise TimeoutError
            continue
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def expand_internal_entities(data: bytes, path: str | os.PathLike) -> bytes:
    """``data`` with its internal entities substituted and the DOCTYPE dropped (see the module docstring); raises
    :class:`UnreadableImage` for entities that nest or hold markup, or an expansion over :data:`MAX_EXPANDED`."""
    doctype = _DOCTYPE.search(data)
    if doctype is None:
        return data
    entities = {m["name"]: m["value"] for m in _ENTITY.finditer(doctype["subset"])}
    for name, value in entities.items():
        if b"&" in value or b"<" in value or b"%" in value:
            raise UnreadableImage(f"{path}: the SVG's entity {name.decode(errors='replace')} refers to other "
                                  "entities or holds markup, which itmatch does not expand (it can grow without "
                                  "limit); remove the DOCTYPE")
    body = data[: doctype.start()] + data[doctype.end():]
    size = len(body) + sum(body.count(b"&" + name + b";") * (len(value) - len(name) - 2)
                           for name, value in entities.items())
    if size > MAX_EXPANDED:
        raise UnreadableImage(f"{path}: the SVG's entities expand to {size >> 20} MiB, over {MAX_EXPANDED >> 20} MiB; "
                              "remove the DOCTYPE")
    for name, value in entities.items():
        body = body.replace(b"&" + name + b";", value)
    return body


#: The renderer :func:`itmatch.features.images.load_image` uses.
RENDERER = SvgRenderer()
atexit.register(RENDERER.close)
