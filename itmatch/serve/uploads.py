"""Checks on an uploaded query picture before anything decodes it: the request's size (refused on its
Content-Length, and while it streams in, by :class:`BodyLimit`), the picture's kind (by its first bytes, not by the
name or type the client claims) and its pixel count (read from the header, so a small file that would decode into a
huge picture is refused)."""

from __future__ import annotations

import json
import struct
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class UploadRejected(Exception):
    """An upload that is refused: ``status`` is the HTTP status to answer with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def picture_kind(data: bytes) -> str | None:
    """``JPEG``, ``PNG`` or ``WebP`` by the file's signature, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def picture_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header of a picture of ``kind``, or None when the header cannot be read."""
    try:
        if kind == "PNG":
            return struct.unpack(">II", data[16:24])
        if kind == "JPEG":
            return _jpeg_size(data)
        return _webp_size(data)
    except struct.error:
        return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame marker, which holds the size."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def too_large(max_bytes: int) -> str:
    """The answer to an upload over ``max_bytes``."""
    size = f"{max_bytes >> 20} MiB" if max_bytes % (1 << 20) == 0 else f"{max_bytes:,} bytes"
    return f"the picture is larger than {size}; send a smaller one"


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """The (width, height) of an acceptable query picture ``data``; raises ``UploadRejected`` (413 too large, 415 not
    a JPEG/PNG/WebP picture or too many pixels) otherwise."""
    if len(data) > max_bytes:
        raise UploadRejected(413, too_large(max_bytes))
    if not data:
        raise UploadRejected(415, "the upload is empty; send a JPEG, PNG or WebP picture")
    kind = picture_kind(data)
    if kind is None:
        raise UploadRejected(415, "the upload is not a JPEG, PNG or WebP picture")
    size = picture_size(data, kind)
    if size is None or size[0] * size[1] > max_pixels or min(size) < 1:
        raise UploadRejected(415, f"the {kind} picture's size cannot be read or is over {max_pixels:,} pixels; send "
                                  "a smaller one")
    return size


class _TooLarge(Exception):
    """Raised into the app when a request body passes the limit: it stops reading it."""


class BodyLimit:
    """ASGI middleware: a request to one of ``paths`` with a body over ``limit`` bytes is answered 413 with
    ``{"error": message}``: on its Content-Length before any of the body is read, and otherwise (no length, or a
    false one) as soon as the bytes received pass the limit; the app is never handed more than ``limit`` bytes."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int, paths: tuple[str, ...],
                 message: str) -> None:
        self.app, self.limit, self.paths, self.message = app, limit, paths, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await self._refuse(send)
            return
        received, over, answered = 0, False, False

        async def limited() -> dict[str, Any]:
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                over = True
                raise _TooLarge
            return message

        async def unless_over(message: dict[str, Any]) -> None:
            nonlocal answered
            if not over:  # once over, the app's own answer to the cut-off body is replaced by the 413
                answered = True
                await send(message)

        try:
            await self.app(scope, limited, unless_over)
        except _TooLarge:
            pass
        if over and not answered:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": self.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
