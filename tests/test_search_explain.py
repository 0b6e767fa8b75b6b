"""Attention explanations: the weights a model explains with are the ones its score uses (checked against the
authors' literal SCAN attention and by rebuilding SAF's score from the explained gates), and `itmatch explain`
draws them into a PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reference_sgraf
from conftest import small_model
from search_support import picture_dataset, picture_index, picture_models
from itmatch.cli import main
from itmatch.errors import ItmatchError
from itmatch.models.layers import l2norm
from itmatch.scoring import pad_tokens
from itmatch.search import Searcher, explain_pair

CAPTION = [1, 7, 12, 30, 4, 2]


def encode(model, seed: int = 0):
    features = torch.rand(1, 36, 24, generator=torch.Generator().manual_seed(seed))
    tokens, lengths = pad_tokens([CAPTION])
    with torch.inference_mode():
        return model.encode_images(features), model.encode_texts(tokens, lengths)


@pytest.mark.parametrize("name", ["sgr", "saf", "tshsr"])
def test_explained_attention_is_the_literal_scan_attention_and_the_score_is_the_models(name):
    model = small_model(name)
    image, text = encode(model)
    with torch.inference_mode():
        explained = model.explain(image, text)
        score = model.score(image, text)[0, 0]
    attention = explained["attention"]
    assert attention.shape == (len(CAPTION), 36)
    torch.testing.assert_close(attention.sum(1), torch.ones(len(CAPTION)))
    literal = reference_sgraf.scan_attention(text.words, image.regions, model.config.lambda_softmax)[0]
    torch.testing.assert_close(l2norm(attention @ image.regions[0]), literal, atol=1e-5, rtol=0)
    assert abs(float(explained["score"]) - float(score)) <= 1e-6
    assert (explained["gates"] is None) == (name != "saf")


def test_saf_score_rebuilt_from_the_explained_gates_equals_its_score():
    model = small_model("saf")
    image, text = encode(model)
    with torch.inference_mode():
        explained = model.explain(image, text)
        nodes, _ = model.sim_enc.nodes(image, text)
        gates = torch.cat([explained["global_gate"][None], explained["gates"]])
        pooled = l2norm((gates[:, None] * nodes[0, 0]).sum(0))
        rebuilt = torch.sigmoid(model.sim_enc.sim_eval_w(pooled))[0]
        score = model.score(image, text)[0, 0]
    assert float(gates.sum()) == pytest.approx(1.0, abs=1e-6)
    assert gates.min() > 0
    assert abs(float(rebuilt) - float(score)) <= 1e-6


def test_explain_pair_gives_words_boxes_and_one_entry_per_cross_attention_model():
    index = Searcher(picture_index())
    data = index.explain(3, "a yellow square zebra")
    assert data["words"] == ["<start>", "a", "yellow", "square", "zebra", "<end>"]
    assert data["known"] == [True, True, True, True, False, True]
    assert [m["model"] for m in data["models"]] == ["sgr", "saf"]
    assert np.asarray(data["boxes"]).shape == (36, 4)
    for explained in data["models"]:
        assert np.asarray(explained["attention"]).shape == (6, 36)
    assert len(data["models"][1]["gates"]) == 6
    hits = index.search_text("a yellow square zebra", top=10, shortlist=10).hits
    mean = np.mean([m["score"] for m in data["models"]])
    assert next(h["score"] for h in hits if h["image"] == 3) == pytest.approx(mean, abs=1e-5)
    with pytest.raises(ItmatchError, match="no cross-attention model"):
        explain_pair([(index.embedder, index.embedder_vocab)], np.zeros((36, 1286), np.float32), "a dog")


def test_itmatch_explain_writes_a_png_from_features_or_an_index(tmp_path, capsys):
    data = picture_dataset()
    models = picture_models()
    out = tmp_path / "attention.png"
    assert main(["explain", "--model", str(models["sgr"]), "--model", str(models["saf"]), "--features", str(data),
                 "--split", "test", "--image", "2", "--text", "a green circle", "--out", str(out),
                 "--json", str(tmp_path / "attention.json")]) == 0
    printed = capsys.readouterr().out
    assert "sgr score" in printed and "saf score" in printed and f"wrote {out}" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved["words"] == ["<start>", "a", "green", "circle", "<end>"]
    from_index = tmp_path / "index.png"
    assert main(["explain", "--index", str(picture_index()), "--image", "2", "--text", "a green circle",
                 "--out", str(from_index)]) == 0
    assert from_index.read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", "--index", str(picture_index()), "--image", "99", "--text", "a", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "ids run from 0 to 9" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
