"""Indexes for galleries of millions: IVF-PQ against the exact index within the stated PQ error, float16 stores
within the stated score tolerance, several feature folders in one build, and `index add` in the index's formats.

The PQ error of a query q is ``eps_q = max_i |q·x_i − q·x̂_i|`` (x̂ the vector the PQ codes stand for): with
every list probed IVF-PQ ranks by q·x̂, so the picture it puts at position k has an exact score within
``2·eps_q`` of the exact index's k-th score, and positions whose exact score is more than ``2·eps_q`` away from
every other picture's hold the same picture in both.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from search_support import save_models, synthetic_data
from itmatch.data.precomp import load_split
from itmatch.errors import ItmatchError
from itmatch.search import Searcher, add_to_index, build_index, open_index
from itmatch.search.vectors import default_m, make_faiss

#: Largest change of a re-ranked score when the stored encodings are float16 (docs/scale.md): float16 keeps
#: 11 significant bits (relative error ≤ 2^-12 ≈ 2.4e-4 per stored value, rounded to nearest); measured here
#: 7.3e-5 (small random models); bfloat16's 8 bits would give 8e-4. docs/scale.md gives the demo-sized figures.
FLOAT16_SCORE_TOLERANCE = 2e-4


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_ivfpq_with_every_list_probed_keeps_the_exact_order_within_the_pq_error() -> None:
    rng = np.random.default_rng(0)
    d, n, queries = 32, 3000, 20
    centres = unit(rng.standard_normal((64, d)))
    gallery = unit(centres[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, d)))
    q = unit(rng.standard_normal((queries, d)))
    for j in range(queries):  # planted: 5 pictures per query at cosines 0.99 .. 0.63
        other = rng.standard_normal((5, d))
        other = unit(other - (other @ q[j])[:, None] * q[j])
        cos = np.array([0.99, 0.9, 0.81, 0.72, 0.63])[:, None]
        gallery[5 * j:5 * j + 5] = unit(cos * q[j] + np.sqrt(1 - cos ** 2) * other)
    pq = make_faiss(gallery, "ivfpq", nlist=16, m=32)
    pq.nprobe = 16
    pq.make_direct_map()
    eps = np.abs(q @ (gallery - pq.reconstruct_n(0, n)).T).max(axis=1)
    flat_scores, flat_ids = make_faiss(gallery, "flat").search(q, 100)
    _, pq_ids = pq.search(q, 100)
    exact = q @ gallery.T
    assert np.all(np.abs(np.take_along_axis(exact, pq_ids, 1) - flat_scores) <= 2 * eps[:, None] + 1e-6)
    separated = 0
    for j in range(queries):
        ranked = np.sort(exact[j])[::-1]
        gaps = np.minimum(np.r_[np.inf, -np.diff(ranked)], np.r_[-np.diff(ranked), np.inf])[:100]
        apart = gaps > 2 * eps[j]
        separated += int(apart.sum())
        np.testing.assert_array_equal(pq_ids[j][apart], flat_ids[j][apart])
    assert separated >= 40  # the statement is not vacuous: the planted pictures are well apart
    np.testing.assert_array_equal(flat_ids[:, 0], np.arange(queries) * 5)


def test_default_m_divides_the_embedding() -> None:
    assert [default_m(d) for d in (128, 1024, 32, 30, 3)] == [32, 256, 8, 6, 1]
    with pytest.raises(ItmatchError, match="--m 7 must divide the embedding size 32; try 8"):
        make_faiss(np.zeros((300, 32), np.float32), "ivfpq", nlist=4, m=7)
    with pytest.raises(ItmatchError, match="needs at least 256 pictures to train on, got 100"):
        make_faiss(np.zeros((100, 32), np.float32), "ivfpq", nlist=4)
    for wrong, message in ({"store_dtype": "float8"}, "--store-dtype must be one of float32, float16, got"), (
            {"index_type": "hnsw"}, "--index-type must be one of auto, flat, ivf, ivfpq, got 'hnsw'"):
        with pytest.raises(ItmatchError, match=message):
            build_index("/nowhere", "/nowhere/index", embedder="vse.pt", **wrong)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """300 synthetic pictures (the least IVF-PQ trains on), small VSE/SGR/SAF; an exact float32 index."""
    data = synthetic_data(300)
    models = save_models(tmp_path_factory.mktemp("models"), data / "vocab.json", img_dim=24)
    exact = tmp_path_factory.mktemp("exact") / "index"
    build_index(data, exact, split="test", embedder=models["vse"], rerankers=[models["sgr"], models["saf"]],
                index_type="flat")
    return data, models, exact


def test_ivfpq_float16_index_finds_what_the_exact_float32_one_finds(gallery, tmp_path) -> None:
    data, models, exact = gallery
    out = tmp_path / "pq"
    meta = build_index(data, out, split="test", embedder=models["vse"], rerankers=[models["sgr"], models["saf"]],
                       index_type="ivfpq", nlist=4, nprobe=1, store_dtype="float16")
    assert meta["faiss"] == {"kind": "ivfpq", "images": "images.1.faiss", "captions": "captions.1.faiss",
                             "nlist": 4, "nprobe": 1, "m": 8} and meta["store_dtype"] == "float16"
    segment = out / "seg-00000"
    assert np.load(segment / "reranker-0" / "regions.npy", mmap_mode="r").dtype == np.float16
    assert np.load(segment / "features.npy", mmap_mode="r").dtype == np.float16
    assert open_index(out).features(np.array([3])).dtype == np.float32
    one, half = Searcher(exact), Searcher(out, nprobe=4)
    worst = 0.0
    for query in load_split(data, "test").captions[::97]:
        a = one.search_text(query, top=300, shortlist=300).hits  # the whole gallery, every list probed
        b = half.search_text(query, top=300, shortlist=300).hits
        by_image = {h["image"]: h["score"] for h in a}
        assert sorted(by_image) == sorted(h["image"] for h in b) == list(range(300))
        worst = max(worst, max(abs(by_image[h["image"]] - h["score"]) for h in b))
        rank = {h["image"]: i for i, h in enumerate(b)}  # hits further apart than the error keep their order
        apart = [(x["image"], y["image"]) for i, x in enumerate(a[:30]) for y in a[i + 1:]
                 if x["score"] - y["score"] > 2 * FLOAT16_SCORE_TOLERANCE]
        assert len(apart) > 1000 and all(rank[x] < rank[y] for x, y in apart)
    assert 0 < worst <= FLOAT16_SCORE_TOLERANCE


def test_index_add_keeps_the_index_formats(gallery, tmp_path) -> None:
    data, models, _ = gallery
    out = tmp_path / "pq"
    build_index(data, out, split="test", embedder=models["vse"], rerankers=[models["sgr"]], index_type="ivfpq",
                nlist=4, store_dtype="float16")
    meta = add_to_index(out, data, split="dev")
    assert meta["faiss"]["kind"] == "ivfpq" and meta["n_images"] == 600 and len(meta["segments"]) == 2
    assert np.load(out / "seg-00001" / "reranker-0" / "regions.npy", mmap_mode="r").dtype == np.float16
    assert open_index(out).image_faiss.ntotal == 600


def test_several_feature_folders_make_one_index_of_several_segments(gallery, tmp_path) -> None:
    data, models, exact = gallery
    out, copy = tmp_path / "two", tmp_path / "copy"
    shutil.copytree(data, copy)  # the same pictures in a second folder (one folder twice is refused)
    meta = build_index([data, copy], out, split="test", embedder=models["vse"], rerankers=[models["sgr"]],
                       index_type="flat")
    assert [s["dir"] for s in meta["segments"]] == ["seg-00000", "seg-00001"] and meta["n_images"] == 600
    index = open_index(out)
    assert len(index.pictures) == 600 and index.pictures[450] == index.pictures[150]
    hits = Searcher(index).search_text("a red circle", top=600, shortlist=600).hits
    score = {h["image"]: h["score"] for h in hits}
    assert all(abs(score[i] - score[i + 300]) <= 1e-6 for i in range(300))  # block order may round differently
