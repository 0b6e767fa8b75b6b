"""The HTTP API of `itmatch serve` with FastAPI's test client: every endpoint, and every request it must refuse
(with a 4xx JSON error, never a file outside the gallery)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from search_support import draw_picture, picture_dataset, picture_index, picture_models
from itmatch.search import Searcher, build_index
from itmatch.serve.app import Limits, create_app

UPLOAD_LIMIT = 100_000


@pytest.fixture(scope="module")
def searcher():
    return Searcher(picture_index())


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher, shortlist=6, limits=Limits(max_upload_bytes=UPLOAD_LIMIT))) as test_client:
        yield test_client


def png_bytes(tmp_path, colour=(40, 40, 220), shape="circle") -> bytes:
    return draw_picture(tmp_path / "query.png", colour, shape).read_bytes()


def refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json()["error"]


def test_health_page_static_files_and_docs(client):
    health = client.get("/health").json()
    assert health == {"status": "ok", "images": 10, "captions": 20,
                      "models": {"embedder": "vse", "rerankers": ["sgr", "saf"]}, "shortlist": 6, "explain": True,
                      "picture_queries": True}
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/image", "/images/{image}", "/explain", "/health"} <= set(paths)


def test_search_returns_the_searchers_ranking(client, searcher):
    body = client.get("/search", params={"q": "  a red circle ", "top": 4}).json()
    expected = searcher.search_text("a red circle", top=4, shortlist=6)
    assert body["query"] == "a red circle" and body["candidates"] == 6
    assert [r["image"] for r in body["results"]] == [h["image"] for h in expected.hits]
    assert [r["score"] for r in body["results"]] == pytest.approx([h["score"] for h in expected.hits])
    first = body["results"][0]
    assert first["thumbnail"] == f"/images/{first['image']}" and first["name"].endswith(".png")
    assert "path" not in first  # the server's file layout stays private


@pytest.mark.parametrize("params, words", [
    ({}, "q: Field required"),  # required, as the OpenAPI schema says
    ({"q": ""}, "the query is empty"),
    ({"q": "   "}, "the query is empty"),
    ({"q": "a" * 201}, "longer than 200 characters"),
    ({"q": "a dog", "top": 0}, "top: "),
    ({"q": "a dog", "top": 101}, "top: "),
    ({"q": "a dog", "top": "many"}, "top: "),
])
def test_search_refuses_bad_queries(client, params, words):
    refused(client.get("/search", params=params), 422, words)


def test_thumbnails(client):
    response = client.get("/images/3")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert max(picture.shape[:2]) == 256
    large = cv2.imdecode(np.frombuffer(client.get("/images/3?size=640").content, np.uint8), cv2.IMREAD_COLOR)
    assert large.shape[:2] == (512, 640)
    refused(client.get("/images/3?size=5000"), 422, "size: choose one of 256, 640")


@pytest.mark.parametrize("path, status", [
    ("/images/10", 404), ("/images/99999999999", 404), ("/images/-1", 422), ("/images/abc", 422),
    ("/images/1.5", 422), ("/images/..%2F..%2Fetc%2Fpasswd", 404), ("/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404),
    ("/images/0%2F..%2F..%2Fetc%2Fpasswd", 404), ("/images/%2e%2e", 422),
    ("/static/..%2F..%2F..%2Fsearch%2Findex.py", 404),
])
def test_ids_cannot_reach_files_outside_the_gallery(client, path, status):
    response = client.get(path)
    assert response.status_code == status, (path, response.text)
    assert "error" in response.json()
    assert b"root:" not in response.content and b"import" not in response.content


def test_path_like_ids_that_the_client_normalises_do_not_leak_either(client):
    response = client.get("/images/../../etc/passwd")
    assert response.status_code == 404 and b"root:" not in response.content


def test_explain(client, searcher):
    body = client.get("/explain", params={"image": 0, "q": "a red circle"}).json()
    assert body["image"] == 0 and body["words"] == ["<start>", "a", "red", "circle", "<end>"]
    assert [m["model"] for m in body["models"]] == ["sgr", "saf"]
    attention = np.asarray(body["models"][0]["attention"])
    assert attention.shape == (5, 36)
    np.testing.assert_allclose(attention.sum(1), 1, atol=1e-3)
    assert np.asarray(body["boxes"]).shape == (36, 4) and len(body["models"][1]["gates"]) == 5
    assert "path" not in body
    expected = searcher.explain(0, "a red circle")
    assert body["models"][0]["score"] == pytest.approx(expected["models"][0]["score"])


@pytest.mark.parametrize("params, status, words", [
    ({"image": 10, "q": "a dog"}, 404, "no image 10"),
    ({"image": -3, "q": "a dog"}, 422, "image: "),
    ({"image": "../../etc/passwd", "q": "a dog"}, 422, "image: "),
    ({"image": 1}, 422, "q: Field required"),
    ({"image": 1, "q": " "}, 422, "the query is empty"),
    ({"q": "a dog"}, 422, "image: "),
])
def test_explain_refuses_bad_requests(client, params, status, words):
    refused(client.get("/explain", params=params), status, words)


def test_picture_query_finds_the_searchers_captions(client, searcher, tmp_path):
    """An uploaded picture (PNG, and the same as JPEG) is answered as ``Searcher.search_picture`` answers its file:
    the same captions in the same order with the same scores (the 200 × 160 picture is not reduced)."""
    response = client.post("/search/image?top=3", files={"file": ("red.png", png_bytes(tmp_path), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["candidates"] == 6
    assert all({"caption", "caption_id", "image", "score", "thumbnail"} <= set(r) for r in body["results"])
    expected = searcher.search_picture(tmp_path / "query.png", top=3, shortlist=6).hits
    assert [r["caption_id"] for r in body["results"]] == [h["caption_id"] for h in expected]
    assert [r["score"] for r in body["results"]] == pytest.approx([h["score"] for h in expected], abs=1e-6)
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(tmp_path / "query.png")))
    (tmp_path / "q.jpg").write_bytes(jpeg.tobytes())
    response = client.post("/search/image?top=3", files={"file": ("q.jpg", jpeg.tobytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    expected = searcher.search_picture(tmp_path / "q.jpg", top=3, shortlist=6).hits
    assert [r["caption_id"] for r in response.json()["results"]] == [h["caption_id"] for h in expected]
    assert [r["score"] for r in response.json()["results"]] == pytest.approx([h["score"] for h in expected], abs=1e-6)


def huge_png_header() -> bytes:
    """A tiny PNG file whose header claims 100,000 × 100,000 pixels."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize("name, data, kind, status, words", [
    ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(UPLOAD_LIMIT), "image/png", 413, "larger than"),
    ("notes.txt", b"just some words, not a picture", "text/plain", 415, "not a JPEG, PNG or WebP"),
    ("fake.png", b"<html>not a png</html>", "image/png", 415, "not a JPEG, PNG or WebP"),
    ("empty.png", b"", "image/png", 415, "empty"),
    ("bomb.png", huge_png_header(), "image/png", 415, "pixels"),
    ("broken.png", huge_png_header()[:16] + struct.pack(">II", 20, 20) + bytes(40), "image/png", 415, "decode"),
    ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, "not a JPEG"),
])
def test_picture_query_refuses_bad_uploads(client, name, data, kind, status, words):
    refused(client.post("/search/image", files={"file": (name, data, kind)}), status, words)


def test_picture_query_without_a_file_is_refused(client):
    refused(client.post("/search/image"), 422, "file: ")


def test_an_index_without_captions_refuses_picture_queries(tmp_path):
    models = picture_models()
    build_index(picture_dataset().parent / "features", tmp_path / "index", embedder=models["vse"],
                rerankers=[models["saf"]])
    with TestClient(create_app(Searcher(tmp_path / "index"))) as plain:
        assert plain.get("/health").json()["picture_queries"] is False
        refused(plain.post("/search/image", files={"file": ("q.png", png_bytes(tmp_path), "image/png")}), 409,
                "no captions")
        assert plain.get("/search", params={"q": "a circle"}).json()["results"][0]["caption"] is None


def test_an_index_of_precomputed_features_says_it_cannot_answer_picture_queries(tmp_path):
    """The status, the 409 and the library agree (the status said yes while the upload failed with a 422)."""
    import json
    import shutil

    from itmatch.errors import ItmatchError

    index = tmp_path / "index"
    shutil.copytree(picture_index(), index)
    meta = json.loads((index / "index.json").read_text())
    meta["extractor"] = {"name": "precomputed", "regions": 36}  # features the user made: no picture reader
    (index / "index.json").write_text(json.dumps(meta))
    searcher = Searcher(index)
    with TestClient(create_app(searcher)) as plain:
        assert plain.get("/health").json()["picture_queries"] is False
        refused(plain.post("/search/image", files={"file": ("q.png", png_bytes(tmp_path), "image/png")}), 409,
                "not made by an extractor that reads pictures (precomputed)")
    with pytest.raises(ItmatchError, match="not made by an extractor that reads pictures"):
        searcher.search_picture(tmp_path / "query.png")


def test_waiting_queries_are_searched_together_and_a_bad_one_fails_alone():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from itmatch.errors import ItmatchError
    from itmatch.serve.batching import QueryBatcher

    calls = []

    def search(queries, top):
        calls.append(list(queries))
        if "bad" in queries:
            raise ItmatchError("bad query")
        return [f"{q}:{top}" for q in queries]

    async def main():
        batcher = QueryBatcher(search, ThreadPoolExecutor(1), workers=1)
        jobs = [batcher.submit(q, 5) for q in ("a", "b", "bad", "c")] + [batcher.submit("d", 7)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == ["a:5", "b:5"] and results[3:] == ["c:5", "d:7"]
    assert isinstance(results[2], ItmatchError)
    # one batch per top; the failing batch is retried query by query
    assert calls == [["a", "b", "bad", "c"], ["a"], ["b"], ["bad"], ["c"], ["d"]]


def test_searches_on_several_threads_at_once_equal_searching_one_by_one():
    """`itmatch serve` runs the model work of concurrent requests on several threads with one ``Searcher``. A fresh
    one (its models' per-length tables empty, so they grow while the threads run) answers text and picture
    searches made at once exactly as one by one (the shared GPO table once failed under this)."""
    from concurrent.futures import ThreadPoolExecutor

    words = "a red blue green circle square triangle that is".split()
    rng = np.random.default_rng(0)
    queries = [" ".join(rng.choice(words, n)) for n in rng.permutation(np.arange(1, 41))]

    def run(searcher: Searcher, job: int) -> list[tuple[int, float]]:
        if job < len(queries):
            hits = searcher.search_texts([queries[job]], top=5, shortlist=6)[0].hits
        else:
            hits = searcher.search_features(features[job - len(queries)][None], top=5, shortlist=6)[0].hits
        return [(hit.get("caption_id", hit["image"]), hit["score"]) for hit in hits]

    alone = Searcher(picture_index())
    features = alone.index.features(np.arange(10))
    jobs = range(len(queries) + len(features))
    expected = [run(alone, job) for job in jobs]
    for _ in range(3):
        shared = Searcher(picture_index())
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda job: run(shared, job), jobs))
        for hits, wanted in zip(got, expected):
            assert [i for i, _ in hits] == [i for i, _ in wanted]
            np.testing.assert_allclose([s for _, s in hits], [s for _, s in wanted], rtol=1e-5)
