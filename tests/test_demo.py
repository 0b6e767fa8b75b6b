"""`python -m itmatch.demo` (the last step of `make demo`): example searches over a dataset folder's pictures,
printed and drawn, equal to the ensemble's own scores."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from search_support import picture_dataset, picture_models

from itmatch.checkpoint import load_model
from itmatch.data import write_synthetic
from itmatch.data.precomp import load_split
from itmatch.data.vocab import load_vocab
from itmatch.demo import CELL, example_searches, main
from itmatch.models.ensemble import Ensemble
from itmatch.scoring import score_matrix


def test_searches_equal_the_ensemble_scores_and_are_drawn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, models = picture_dataset(), picture_models()
    queries = ["a red circle", "a blue square"]
    results = example_searches(data, [models["sgr"], models["saf"]], queries, top=3)
    split = load_split(data, "test")
    ensemble = Ensemble([load_model(models["sgr"]), load_model(models["saf"])])
    sims = score_matrix(ensemble, split.image_features(np.arange(split.n_images)),
                        load_vocab(data / "vocab.json").encode_all(queries))
    for column, result in enumerate(results):
        best = np.argsort(-sims[:, column], kind="stable")[:3]
        assert result["query"] == queries[column]
        assert [hit["score"] for hit in result["hits"]] == pytest.approx(sims[best, column].tolist(), abs=1e-6)
        assert [Path(hit["image"]).name[:2] for hit in result["hits"]] == [f"{i:02d}" for i in best]
        assert [hit["caption"] for hit in result["hits"]] == [split.captions[2 * i] for i in best]

    figure = tmp_path / "runs" / "demo.png"
    args = ["--data", str(data), "--checkpoint", str(models["sgr"]), "--checkpoint", str(models["saf"]),
            "--top", "2", "--figure", str(figure)]
    assert main([*args, "--query", queries[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'query: "a red circle"' and out[1].startswith("  1. ") and out[-1] == f"wrote {figure}"
    picture = cv2.imread(str(figure))
    assert picture.shape == (CELL + 44 + 8, 260 + 8 + 2 * (CELL + 8), 3)  # query text, then two thumbnails


def test_a_dataset_without_its_picture_listing_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_synthetic(tmp_path / "data", n_images={"train": 2, "test": 3}, feature_dim=1286)
    model = picture_models()["vse"]
    code = main(["--data", str(data), "--checkpoint", str(model), "--query", "a dog"])
    out = capsys.readouterr().out
    assert code == 2 and out.startswith("error: ") and "test_images.jsonl: missing" in out
    assert not list(tmp_path.rglob("*.png"))
