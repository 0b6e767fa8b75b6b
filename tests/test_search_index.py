"""The search index and two-stage retrieval: shortlist + re-rank against exhaustive re-ranking and the scoring
engine, index add against an index built at once, IVF, and the errors a user can make."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from search_support import picture_dataset, picture_models, save_models, synthetic_data
from itmatch.cli import main
from itmatch.data.precomp import ImageRows, load_split, write_split
from itmatch.errors import ItmatchError
from itmatch.loading import load_models
from itmatch.models.ensemble import Ensemble
from itmatch.scoring import score_matrix
from itmatch.search import Searcher, add_to_index, build_index, open_index


@pytest.fixture(scope="module")
def synthetic_index(tmp_path_factory):
    """40 synthetic pictures × 5 captions; VSE shortlists, SGR + SAF re-rank; returns (index, data, models)."""
    data = synthetic_data()
    models = save_models(tmp_path_factory.mktemp("models"), data / "vocab.json", img_dim=24)
    out = tmp_path_factory.mktemp("index") / "index"
    build_index(data, out, split="test", embedder=models["vse"], rerankers=[models["sgr"], models["saf"]])
    return out, data, models


def engine_scores(models, data, queries):
    """SGR + SAF scores (pictures × queries) of every test picture, by the library's scoring engine."""
    sgr, vocab = load_models([models["sgr"]], None)
    saf, _ = load_models([models["saf"]], None)
    split = load_split(data, "test")
    return score_matrix(Ensemble([sgr, saf]), ImageRows(split, np.arange(split.n_images)), vocab.encode_all(queries))


def test_two_stage_with_the_whole_gallery_shortlisted_equals_exhaustive_and_the_engine(synthetic_index):
    out, data, models = synthetic_index
    searcher = Searcher(out)
    queries = load_split(data, "test").captions[::37]
    engine = engine_scores(models, data, queries)
    for column, query in enumerate(queries):
        two_stage = searcher.search_text(query, top=10, shortlist=40)
        exhaustive = searcher.search_text(query, top=10, exhaustive=True)
        assert two_stage.candidates == exhaustive.candidates == 40
        assert [h["image"] for h in two_stage.hits] == [h["image"] for h in exhaustive.hits]
        assert [h["score"] for h in two_stage.hits] == [h["score"] for h in exhaustive.hits]
        expected = np.argsort(-engine[:, column], kind="stable")[:10]
        assert [h["image"] for h in two_stage.hits] == expected.tolist()
        np.testing.assert_allclose([h["score"] for h in two_stage.hits], engine[expected, column], atol=1e-5)


def test_a_short_shortlist_re_ranks_the_embedding_models_nearest(synthetic_index):
    out, data, models = synthetic_index
    searcher = Searcher(out)
    query = load_split(data, "test").captions[3]
    vse, vocab = load_models([models["vse"]], None)
    split = load_split(data, "test")
    by_embedding = score_matrix(vse, ImageRows(split, np.arange(40)), vocab.encode_all([query]))[:, 0]
    nearest = set(np.argsort(-by_embedding)[:8].tolist())
    result = searcher.search_text(query, top=5, shortlist=8)
    assert result.candidates == 8
    assert {h["image"] for h in result.hits} <= nearest
    scores = [h["score"] for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    for hit in result.hits:
        assert hit["embedding_score"] == pytest.approx(by_embedding[hit["image"]], abs=1e-5)
        assert hit["caption"] == split.captions[5 * hit["image"]]


def test_picture_to_text_two_stage_equals_exhaustive_and_the_engine(synthetic_index):
    out, data, models = synthetic_index
    searcher = Searcher(out)
    index = open_index(out)
    split = load_split(data, "test")
    engine = engine_scores(models, data, split.captions)
    two_stage = searcher.search_features(index.features(np.arange(3)), top=7, shortlist=200)
    exhaustive = searcher.search_features(index.features(np.arange(3)), top=7, exhaustive=True)
    for row in range(3):
        expected = np.argsort(-engine[row], kind="stable")[:7]
        assert [h["caption_id"] for h in two_stage[row].hits] == expected.tolist()
        assert [h["caption_id"] for h in exhaustive[row].hits] == expected.tolist()
        np.testing.assert_allclose([h["score"] for h in two_stage[row].hits], engine[row, expected], atol=1e-5)
        assert all(split.captions[h["caption_id"]] == h["caption"] and h["image"] == h["caption_id"] // 5
                   for h in two_stage[row].hits)


def test_picture_queries_searched_together_equal_each_searched_alone(synthetic_index):
    """A group of picture queries shares the encoding of its shortlisted captions; each query's scores must be
    those of the engine for its own shortlist, across group boundaries (40 queries > PICTURE_GROUP)."""
    out, data, models = synthetic_index
    searcher = Searcher(out)
    index = open_index(out)
    split = load_split(data, "test")
    engine = engine_scores(models, data, split.captions)
    together = searcher.search_features(index.features(np.arange(40)), top=4, shortlist=9)
    for row in (0, 31, 32, 39):
        alone = searcher.search_features(index.features(np.array([row])), top=4, shortlist=9)[0]
        assert together[row].candidates == alone.candidates == 9
        assert [h["caption_id"] for h in together[row].hits] == [h["caption_id"] for h in alone.hits]
        ids = [h["caption_id"] for h in together[row].hits]
        np.testing.assert_allclose([h["score"] for h in together[row].hits], engine[row, ids], atol=1e-5)


def test_add_then_search_equals_an_index_built_at_once(synthetic_index, tmp_path):
    _, data, models = synthetic_index
    split = load_split(data, "test")
    features = split.image_features(np.arange(split.n_images))
    for name, pictures in (("first", slice(0, 25)), ("second", slice(25, 40))):
        write_split(tmp_path / name, "test", features[pictures], split.captions[pictures.start * 5:pictures.stop * 5],
                    np.repeat(np.arange(pictures.stop - pictures.start), 5))
    at_once, added = tmp_path / "at_once", tmp_path / "added"
    options = {"split": "test", "embedder": models["vse"], "rerankers": [models["sgr"], models["saf"]]}
    build_index(data, at_once, **options)
    build_index(tmp_path / "first", added, **options)
    meta = add_to_index(added, tmp_path / "second", split="test")
    assert (meta["n_images"], meta["n_captions"], len(meta["segments"])) == (40, 200, 2)
    assert sorted(p.name for p in added.glob("*.faiss")) == ["captions.2.faiss", "images.2.faiss"]
    one, two = Searcher(at_once), Searcher(added)
    for query in split.captions[::23]:
        for shortlist in (6, 40):
            a = one.search_text(query, top=8, shortlist=shortlist).hits
            b = two.search_text(query, top=8, shortlist=shortlist).hits
            assert [(h["image"], h["caption"]) for h in a] == [(h["image"], h["caption"]) for h in b]
            np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-6)
    probe = open_index(at_once).features(np.array([30, 2]))
    np.testing.assert_array_equal(open_index(added).features(np.array([30, 2])), probe)
    a, b = one.search_features(probe, top=5, shortlist=50), two.search_features(probe, top=5, shortlist=50)
    assert [[h["caption_id"] for h in r.hits] for r in a] == [[h["caption_id"] for h in r.hits] for r in b]
    # the same pictures again (no file names to tell new ones by) are refused, not indexed twice
    with pytest.raises(ItmatchError, match="already in the index \\(seg-00001\\).*nothing added"):
        add_to_index(added, tmp_path / "second", split="test")
    assert open_index(added).meta["n_images"] == 40
    with pytest.raises(ItmatchError, match="given twice as --features"):
        build_index([tmp_path / "first", tmp_path / "first"], tmp_path / "twice", **options)


def test_ivf_searching_every_list_finds_what_the_exact_index_finds(synthetic_index, tmp_path):
    out, data, models = synthetic_index
    ivf = tmp_path / "ivf"
    meta = build_index(data, ivf, split="test", embedder=models["vse"], rerankers=[models["sgr"]], index_type="ivf",
                       nlist=4, nprobe=1)
    assert meta["faiss"]["kind"] == "ivf" and meta["faiss"]["nlist"] == 4
    assert open_index(out).meta["faiss"]["kind"] == "flat"  # auto: a small gallery is searched exactly
    exact = Searcher(out)
    exact.rerankers, exact._templates = exact.rerankers[:1], exact._templates[:1]
    every_list = Searcher(ivf, nprobe=4)
    for query in load_split(data, "test").captions[::41]:
        assert [h["image"] for h in every_list.search_text(query, top=5, shortlist=12).hits] == \
               [h["image"] for h in exact.search_text(query, top=5, shortlist=12).hits]


def test_the_cli_builds_searches_and_adds(tmp_path, capsys):
    data = picture_dataset()
    models = picture_models()
    out = tmp_path / "index"
    assert main(["index", "build", "--features", str(data), "--split", "test", "--embedder", str(models["vse"]),
                 "--reranker", str(models["sgr"]), "--out", str(out), "--no-progress"]) == 0
    assert "10 pictures, 20 captions, flat FAISS index; shortlist by vse, re-rank by sgr" in capsys.readouterr().out
    # what the command prints is the library's search: the same hits, in order, with the same scores
    expected = Searcher(out).search_text("a red circle", top=3).hits
    assert main(["search", "--index", str(out), "a red circle", "--top", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["candidates"] == 10
    assert [h["image"] for h in result["results"]] == [h["image"] for h in expected]
    assert [h["score"] for h in result["results"]] == pytest.approx([h["score"] for h in expected], abs=1e-6)
    assert main(["search", "--index", str(out), "a red circle", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("vse shortlist, re-ranked 10 with sgr, ")
    for rank, (line, hit) in enumerate(zip(lines[:2], expected), 1):
        assert line.split()[:2] == [f"{rank}.", f"{hit['score']:.3f}"]
        assert f"image {hit['image']:<6d} {Path(hit['path']).name}" in line and line.endswith(hit["caption"])
    assert main(["index", "add", "--index", str(out), "--features", str(data.parent / "features"),
                 "--no-progress"]) == 0
    # the same pictures again: nothing is added twice
    assert "10 pictures, 20 captions in 1 segments; skipped 10 pictures already in it" in capsys.readouterr().out
    picture = open_index(out).pictures[2]["path"]
    assert main(["search", "--index", str(out), "--image", picture, "--top", "2", "--json"]) == 0
    expected = Searcher(out).search_picture(picture, top=2).hits
    assert [h["caption_id"] for h in json.loads(capsys.readouterr().out)["results"]] == [h["caption_id"]
                                                                                       for h in expected]


def test_user_mistakes_are_one_line_errors(synthetic_index, tmp_path, capsys):
    out, data, models = synthetic_index
    with pytest.raises(ItmatchError, match=r"sgr.safetensors: the first stage needs an embedding model \(hrem, vse\), "
                       "not sgr, which scores pairs with cross-attention; pass it as --reranker instead"):
        build_index(data, tmp_path / "a", split="test", embedder=models["sgr"])
    assert main(["encode", "-c", str(models["sgr"]), "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    assert "sgr.safetensors: itmatch encode needs an embedding model (hrem, vse), not sgr" in capsys.readouterr().err
    with pytest.raises(ItmatchError, match="say which split"):
        build_index(data, tmp_path / "b", embedder=models["vse"])
    with pytest.raises(ItmatchError, match="neither an `itmatch extract` folder"):
        build_index(tmp_path, tmp_path / "c", embedder=models["vse"])
    with pytest.raises(ItmatchError, match="not a search index"):
        Searcher(tmp_path)
    with pytest.raises(ItmatchError, match="ids run from 0 to 39"):
        Searcher(out).explain(40, "a dog")
    for unknown in (lambda: Searcher(out).search_text("qwerty zxcvb"), lambda: Searcher(out).explain(0, "qwerty")):
        with pytest.raises(ItmatchError, match="none of the words of 'qwerty.*' is in the model's vocabulary"):
            unknown()
    with pytest.raises(ItmatchError, match="extractor that reads pictures"):
        Searcher(out).search_picture(data / "test_ims.npy")
    with pytest.raises(ItmatchError, match="regions × 1286 dims"):
        add_to_index(out, picture_dataset(), split="test")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))  # nothing half-written
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert main(["index", "build", "--features", str(data), "--split", "test", "--embedder", str(models["vse"]),
                 "--out", str(occupied)]) == 2
    assert "holds files itmatch did not write (e.g. notes.txt)" in capsys.readouterr().err


def test_a_failed_build_leaves_an_earlier_index_untouched(synthetic_index, tmp_path):
    out, data, models = synthetic_index
    copy = tmp_path / "index"
    shutil.copytree(out, copy)
    before = sorted(p.name for p in copy.rglob("*"))
    wrong = save_models(tmp_path / "wrong", data / "vocab.json", img_dim=12, names=("sgr",))
    with pytest.raises(ItmatchError, match="image features must be"):
        build_index(data, copy, split="test", embedder=models["vse"], rerankers=[wrong["sgr"]])
    assert sorted(p.name for p in copy.rglob("*")) == before
    assert Searcher(copy).search_text("a dog", top=1).hits


def test_index_files_are_memory_mapped_and_hold_the_rerankers_encodings(synthetic_index):
    out, data, models = synthetic_index
    index = open_index(out)
    assert isinstance(index._arrays["features.npy"].arrays[0].base, np.memmap)
    sgr, _ = load_models([models["sgr"]], None)
    with torch.inference_mode():
        expected = sgr.encode_images(torch.from_numpy(load_split(data, "test").image_features(np.arange(3))))
    stored = index.encoding_fields(0, np.array([0, 1, 2]))
    np.testing.assert_allclose(stored["regions"], expected.regions.numpy(), atol=1e-6)  # another batch size
    np.testing.assert_allclose(stored["glob"], expected.glob.numpy(), atol=1e-6)
    assert index.meta["rerankers"][0]["source"] == str(models["sgr"].absolute())
    assert (out / index.meta["rerankers"][0]["file"]).is_file()


def test_an_index_build_refuses_pictures_whose_features_are_not_finite(tmp_path):
    source = picture_dataset().parent / "features"
    features = tmp_path / "features"
    shutil.copytree(source, features)
    array = np.load(features / "features.npy")
    array[2, 0, 5] = np.nan
    np.save(features / "features.npy", array)
    picture = json.loads((features / "images.jsonl").read_text().splitlines()[2])["path"]
    with pytest.raises(ItmatchError, match=f"{features}: the features of 1 picture.*{Path(picture).name}.* hold NaN"):
        build_index(features, tmp_path / "index", embedder=picture_models()["vse"])
    assert not (tmp_path / "index").exists()
