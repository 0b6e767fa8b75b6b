"""Decode a picture file into an upright, opaque BGR ``uint8`` array.

Reads every format OpenCV reads (JPEG, PNG, WebP, TIFF, BMP, ...) plus SVG (rendered with cairosvg). EXIF
orientation is honoured (OpenCV applies it when decoding colour), and transparency is composited onto white:
OpenCV drops the alpha channel in the orientation-aware decode and ignores orientation in the alpha-keeping one, so a
picture with alpha is decoded both ways and the alpha plane is turned the way the colour decode turned the picture.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from itmatch.errors import UnreadableImage  # noqa: F401  (raised here; part of this module's interface)
from itmatch.features import svg
from itmatch.features.svg import SVG_SIZE  # noqa: F401  (part of this module's interface)

#: File name suffixes :func:`find_images` collects (OpenCV's formats plus SVG).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".pbm", ".pgm", ".ppm", ".pnm",
     ".pxm", ".sr", ".ras", ".jp2", ".exr", ".hdr", ".pic", ".avif", ".gif", ".svg"}
)

# The eight EXIF orientations as array operations (raw -> upright), identity first.
_ORIENTATIONS = (
    lambda a: a,
    lambda a: a[:, ::-1],
    lambda a: a[::-1, ::-1],
    lambda a: a[::-1],
    lambda a: a.swapaxes(0, 1),
    lambda a: np.rot90(a, -1),
    lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    lambda a: np.rot90(a, 1),
)


def find_images(directory: Path) -> list[Path]:
    """Every picture file under ``directory`` (recursively, symlinks to files included), sorted by path."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: str | Path, reduce: int = 1) -> np.ndarray:
    """Decode ``path`` into an upright BGR ``uint8`` array of shape (H, W, 3); transparent parts become white.
    ``reduce`` (1, 2, 4 or 8) decodes a picture at that fraction of its size (see :func:`decode_image`; SVG
    drawings are always rendered at :data:`SVG_SIZE`).

    Raises :class:`UnreadableImage` naming the file when it cannot be read or decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read the file ({exc.strerror}); check the path") from None
    if path.suffix.lower() == ".svg":
        return _composite(_decode_unchanged(svg.RENDERER.render(data, path), path))
    return decode_image(data, path, reduce)


#: OpenCV's colour decode at 1/1, 1/2, 1/4 and 1/8 of the size.
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def reduction(width: int, height: int, side: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides of a ``width`` x ``height`` picture at least ``side``."""
    return max(k for k in _REDUCED if k == 1 or min(width, height) // k >= side)


def decode_image(data: bytes, name: str | Path, reduce: int = 1) -> np.ndarray:
    """Decode the picture file bytes ``data`` (named ``name`` in errors) like :func:`load_image`, at 1/``reduce``
    of its size (1, 2, 4 or 8). A JPEG is decoded at that size directly (its decoder scales the blocks), so a
    huge photo never occupies memory at full size; other formats are scaled after decoding."""
    buffer = np.frombuffer(data, np.uint8)
    colour = cv2.imdecode(buffer, _REDUCED[reduce]) if buffer.size else None
    if colour is None:
        raise UnreadableImage(f"{name}: not a picture OpenCV can decode (not a picture, or cut short); "
                              "convert it to PNG or JPEG")
    if data[:2] == b"\xff\xd8":  # JPEG: never has alpha, the colour decode is the answer
        return colour
    raw = _decode_unchanged(data, Path(name))
    if raw.ndim == 3 and raw.shape[2] == 4:
        if reduce > 1:
            raw = _resize_like(raw, colour)
        return _composite(_orient_like(raw, colour))
    return colour


def _resize_like(raw: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``raw`` scaled (area averaging) to ``colour``'s size, or to its transpose when the orientation turned it."""
    height, width = colour.shape[:2]
    turned = (raw.shape[0] > raw.shape[1]) != (height > width)
    return cv2.resize(raw, (height, width) if turned else (width, height), interpolation=cv2.INTER_AREA)


def _decode_unchanged(data: bytes, path: Path) -> np.ndarray:
    """Decode keeping alpha and bit depth, then scale to ``uint8``; (H, W) or (H, W, C)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UnreadableImage(f"{path}: not a picture OpenCV can decode; convert it to PNG or JPEG")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float32)) * 255.0, 0, 255).round().astype(np.uint8)
    return image


def _orient_like(raw: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Turn the raw BGRA array the way OpenCV turned its colour decode (EXIF orientation), found by comparison."""
    best, best_diff = raw, np.inf
    for turn in _ORIENTATIONS:
        candidate = turn(raw)
        if candidate.shape[:2] != colour.shape[:2]:
            continue
        diff = np.abs(candidate[..., :3].astype(np.int16) - colour).mean()
        if diff == 0:
            return np.ascontiguousarray(candidate)
        if diff < best_diff:
            best, best_diff = candidate, diff
    return np.ascontiguousarray(best)


def _composite(image: np.ndarray) -> np.ndarray:
    """Grey, BGR or BGRA ``uint8`` -> opaque BGR ``uint8``, alpha composited onto white."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 3:
        return image
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    out = image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.clip(out.round(), 0, 255).astype(np.uint8))
