"""The SVG rendering process of :mod:`itmatch.features.svg`: run as a script (``python -I svg_worker.py LIMIT``), so
that it imports cairosvg and the standard library only, with its address space capped at LIMIT bytes.

It reads requests from stdin and writes answers to stdout, each a frame: a 4-byte big-endian length, then the bytes.
A request is ``SIZE`` (4 bytes: the longest side in pixels) followed by the SVG; an answer is ``ok`` + PNG bytes or
``no`` + a one-line reason.
"""

from __future__ import annotations

import resource
import sys
from typing import BinaryIO


def _read(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def _render(svg: bytes, size: int) -> bytes:
    """PNG bytes whose longest side is ``size``, transparent background."""
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg, output_width=size)
    if int.from_bytes(png[20:24], "big") > int.from_bytes(png[16:20], "big"):  # taller than wide
        png = cairosvg.svg2png(bytestring=svg, output_height=size)
    return png


def main() -> None:
    limit = int(sys.argv[1])
    try:
        import cairosvg  # noqa: F401  -- before the cap: loading the libraries is not the drawing's cost
    except (ImportError, OSError) as exc:  # OSError: libcairo2 missing
        _write(sys.stdout.buffer, b"no" + f"cairosvg cannot be loaded ({exc})".encode())
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    _write(sink, b"ok")  # ready
    while (head := _read(source, 4)) is not None:
        request = _read(source, int.from_bytes(head, "big"))
        if request is None:
            return
        try:
            answer = b"ok" + _render(request[4:], int.from_bytes(request[:4], "big"))
        except MemoryError:
            answer = b"no" + b"it needs more memory than the limit"
        except Exception as exc:  # noqa: BLE001 -- cairosvg raises many kinds (XML, value, cairo) for bad drawings
            answer = b"no" + f"{type(exc).__name__}: {exc}".replace("\n", " ").encode()
        _write(sink, answer)


if __name__ == "__main__":
    main()
