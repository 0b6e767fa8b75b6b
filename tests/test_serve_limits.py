"""The service's limits on query pictures: an upload over the size limit is refused before it is read (or as soon as
it passes the limit), a picture is decoded at the size the detector needs on a thread of its own, and no answer
shows a path on the server."""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

import itmatch.serve.routes.search as search_routes
from search_support import picture_index
from itmatch.features.images import decode_image, load_image, reduction
from itmatch.search import Searcher
from itmatch.serve.app import MULTIPART_OVERHEAD, Limits, create_app

LIMIT = 100_000
BOUNDARY = b"itmatchboundary"


@pytest.fixture(scope="module")
def app():
    return create_app(Searcher(picture_index()), shortlist=6, limits=Limits(max_upload_bytes=LIMIT))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def default_client():
    with TestClient(create_app(Searcher(picture_index()), shortlist=6)) as test_client:
        yield test_client


def post_upload(app, headers: list[tuple[bytes, bytes]], chunks) -> tuple[int, dict[str, Any], int]:
    """POST /search/image straight into the ASGI app with the body ``chunks`` (an iterator, pulled only as the app
    asks); the answer's status and JSON, and how many body bytes the app pulled."""
    pulled, answer = 0, {}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        answer.setdefault(message["type"], []).append(message)

    scope = {"type": "http", "method": "POST", "path": "/search/image", "raw_path": b"/search/image",
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY), *headers]}
    asyncio.run(app(scope, receive, send))
    status = answer["http.response.start"][0]["status"]
    body = b"".join(m.get("body", b"") for m in answer["http.response.body"])
    return status, json.loads(body), pulled


def endless_upload(chunk: int = 1 << 16, total: int = 500 << 20):
    """A multipart body of a ``total``-byte PNG file, in ``chunk``-byte pieces."""
    yield (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
           b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
    for _ in range(total // chunk):
        yield bytes(chunk)


def test_an_upload_is_refused_on_its_content_length_before_any_of_it_is_read(app):
    status, body, pulled = post_upload(app, [(b"content-length", str(500 << 20).encode())], endless_upload())
    assert (status, pulled) == (413, 0)
    assert body == {"error": "the picture is larger than 100,000 bytes; send a smaller one"}


def test_an_upload_without_a_length_is_cut_off_at_the_limit(app):
    status, body, pulled = post_upload(app, [], endless_upload())
    assert status == 413 and "larger than" in body["error"]
    assert LIMIT < pulled <= LIMIT + MULTIPART_OVERHEAD + (1 << 16)  # not the 500 MiB


def test_an_upload_with_a_false_length_is_cut_off_too(app):
    status, _, pulled = post_upload(app, [(b"content-length", b"1000")], endless_upload())
    assert status == 413 and pulled <= LIMIT + MULTIPART_OVERHEAD + (1 << 16)


def test_a_cut_short_jpeg_is_refused_without_a_server_path(client, tmp_path):
    photo = cv2.imencode(".jpg", np.full((400, 300, 3), 128, np.uint8))[1].tobytes()
    response = client.post("/search/image", files={"file": ("photo.jpg", photo[: len(photo) // 2], "image/jpeg")})
    assert response.status_code == 415
    assert response.json() == {"error": "the picture cannot be decoded (cut short or damaged?); send a complete "
                                        "JPEG, PNG or WebP file"}


def test_a_picture_over_the_pixel_limit_is_refused(default_client):
    png = cv2.imencode(".png", np.zeros((6000, 6000, 4), np.uint8))[1].tobytes()  # 148 KB, 144 MB decoded
    response = default_client.post("/search/image", files={"file": ("big.png", png, "image/png")})
    assert response.status_code == 415 and "over 16,000,000 pixels" in response.json()["error"]


def test_query_pictures_are_decoded_small_on_the_picture_thread(default_client, monkeypatch):
    seen = []

    def recording(data: bytes, name: Any, reduce: int = 1) -> np.ndarray:
        picture = decode_image(data, name, reduce)
        seen.append((threading.current_thread().name, reduce, picture.shape))
        return picture

    monkeypatch.setattr(search_routes, "decode_image", recording)
    photo = cv2.imencode(".jpg", np.full((3000, 4000, 3), (40, 40, 220), np.uint8))[1].tobytes()
    response = default_client.post("/search/image?top=2", files={"file": ("photo.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert len(seen) == 1 and seen[0][0].startswith("itmatch-picture")
    assert seen[0][1:] == (8, (375, 500, 3))  # 1/8: both sides still over the detector's 300


def test_reduced_decoding_keeps_the_memory_small():
    rng = np.random.default_rng(0)
    photo = cv2.imencode(".jpg", rng.integers(0, 255, (4000, 4000, 3), dtype=np.uint8))[1].tobytes()
    assert reduction(4000, 4000, 300) == 8 and reduction(4000, 500, 300) == 1 and reduction(900, 1300, 300) == 2
    tracemalloc.start()
    try:
        small = decode_image(photo, "photo.jpg", 8)
        jpeg_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        rgba = np.zeros((4000, 4000, 4), np.uint8)
        rgba[:2000, :, 2:] = 255  # top half opaque red, bottom half transparent
        png = cv2.imencode(".png", rgba)[1].tobytes()
        del rgba
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        composited = decode_image(png, "drawing.png", 8)
        png_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert small.shape == (500, 500, 3) and jpeg_peak < 2e6  # a full decode holds 48 MB
    assert composited.shape == (500, 500, 3) and png_peak < 70e6  # the alpha plane once at full size (64 MB)
    np.testing.assert_array_equal(composited[100, 100], [0, 0, 255])
    np.testing.assert_array_equal(composited[400, 100], [255, 255, 255])


def test_reduced_decoding_matches_a_full_decode_scaled_down(tmp_path):
    rgba = np.zeros((1200, 1600, 4), np.uint8)
    rgba[..., :3] = np.linspace(0, 255, 1600, dtype=np.uint8)[None, :, None]
    rgba[..., 3] = np.linspace(0, 255, 1200, dtype=np.uint8)[:, None]
    path = tmp_path / "fade.png"
    cv2.imwrite(str(path), rgba)
    full = cv2.resize(load_image(path), (400, 300), interpolation=cv2.INTER_AREA).astype(int)
    small = decode_image(path.read_bytes(), path, 4).astype(int)
    assert small.shape == full.shape and np.abs(small - full).max() <= 2
