"""Evaluation protocols: layout checks, the blocks each one scores, COCO-1K fold averaging, the result JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from itmatch import protocols
from itmatch.errors import ItmatchError
from itmatch.metrics import retrieval_metrics
from itmatch.protocols import PROTOCOLS, check_protocol, evaluate_blocks, format_table, protocol_blocks


def five_each(n_images: int) -> np.ndarray:
    return np.arange(5 * n_images, dtype=np.int64) // 5


def fold_with_rank(k: int, n_images: int = 1000) -> np.ndarray:
    """A (n_images, 5 n_images) block in which every image's own captions score 0.5 and the first k captions of
    the next image score 1.0 (everything else 0): each image has i2t rank k, and each caption j < k of an image
    is outscored by the previous image only, so it has t2i rank 1 (the others rank 0)."""
    sims = np.zeros((n_images, 5 * n_images), dtype=np.float32)
    images = np.arange(n_images)
    sims[images[:, None], 5 * images[:, None] + np.arange(5)] = 0.5
    following = (images + 1) % n_images
    sims[images[:, None], 5 * following[:, None] + np.arange(k)] = 1.0
    return sims


def test_protocol_names():
    assert PROTOCOLS == ("f30k", "coco1k", "coco5k", "full")
    assert check_protocol(None, 3, np.array([0, 1, 1, 2])) == "full"
    assert check_protocol("f30k", 1000, five_each(1000)) == "f30k"
    assert check_protocol("coco5k", 5000, five_each(5000)) == "coco5k"


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(ItmatchError, match="unknown protocol 'coco'; choose one of f30k, coco1k, coco5k, full"):
        check_protocol("coco", 1000, five_each(1000))


@pytest.mark.parametrize("name, n_images, caption_image, got", [
    ("f30k", 1014, five_each(1014), "got 1014 images and 5070 captions"),
    ("f30k", 1000, np.repeat(np.arange(1000), 4), "got 1000 images and 4000 captions"),
    ("coco1k", 1000, five_each(1000), "got 1000 images and 5000 captions"),
    ("coco5k", 5000, np.sort(np.r_[five_each(5000)[:-1], 0]), "got 5000 images and 25000 captions"),
])
def test_data_that_does_not_fit_the_protocol(name, n_images, caption_image, got):
    with pytest.raises(ItmatchError, match=f"protocol {name} needs .* 5 captions each.*{got}; omit --protocol"):
        check_protocol(name, n_images, caption_image)


def test_full_protocol_checks_the_layout():
    with pytest.raises(ItmatchError, match="image 1 has no caption"):
        check_protocol(None, 3, np.array([0, 2, 2]))


def test_blocks():
    (images, captions), = protocol_blocks("f30k", five_each(1000))
    np.testing.assert_array_equal(images, np.arange(1000))
    np.testing.assert_array_equal(captions, np.arange(5000))
    (images, captions), = protocol_blocks(None, np.array([0, 0, 1, 2, 2, 2]))
    np.testing.assert_array_equal(images, [0, 1, 2])
    np.testing.assert_array_equal(captions, np.arange(6))
    folds = protocol_blocks("coco1k", five_each(5000))
    assert len(folds) == 5
    for k, (images, captions) in enumerate(folds):
        np.testing.assert_array_equal(images, np.arange(1000 * k, 1000 * (k + 1)))
        np.testing.assert_array_equal(captions, np.arange(5000 * k, 5000 * (k + 1)))


@pytest.fixture(scope="module")
def coco1k_result() -> dict:
    """COCO-1K on the full 5,000 x 25,000 layout; fold k is ``fold_with_rank(k)``."""
    return evaluate_blocks("coco1k", five_each(5000), [fold_with_rank(k) for k in range(5)])


def test_coco1k_averages_every_number_over_folds(coco1k_result):
    result = coco1k_result
    # i2t: fold k has every rank = k -> R@1 100 for k = 0 only, R@5 and R@10 always 100, medr = meanr = k + 1.
    assert result["i2t"] == pytest.approx({"r1": 20.0, "r5": 100.0, "r10": 100.0, "medr": 3.0, "meanr": 3.0})
    # t2i: in fold k a fraction k/5 of the captions has rank 1, the rest 0: R@1 = 100 - 20 k,
    # medr = 1, 1, 1, 2, 2 (rank 1 is the median once k >= 3), meanr = 1 + k/5.
    assert result["t2i"] == pytest.approx({"r1": 60.0, "r5": 100.0, "r10": 100.0, "medr": 1.4, "meanr": 1.4})
    # The mean of fold rsums = the sum of the mean recalls (not the authors' printed 6 x mean i2t recall = 240).
    assert result["rsum"] == pytest.approx(20 + 100 + 100 + 60 + 100 + 100)
    assert [fold["t2i"]["medr"] for fold in result["folds"]] == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert [fold["i2t"]["meanr"] for fold in result["folds"]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (result["protocol"], result["n_images"], result["n_captions"]) == ("coco1k", 5000, 25000)


def test_coco1k_folds_are_the_blocks_metrics_and_their_mean(monkeypatch):
    monkeypatch.setitem(protocols._LAYOUTS, "coco1k", (1000, 5))  # folds of 200 images keep the test fast
    rng = np.random.default_rng(0)
    # Easier folds first (a larger own-pair bonus), so the numbers differ between folds.
    blocks = [rng.standard_normal((200, 1000), dtype=np.float32) + (4 - k) * fold_with_rank(0, 200)
              for k in range(5)]
    result = evaluate_blocks("coco1k", five_each(1000), blocks)
    folds = [retrieval_metrics(block, five_each(200)) for block in blocks]
    assert [{key: fold[key] for key in ("i2t", "t2i", "rsum")} for fold in result["folds"]] == folds
    assert all((fold["n_images"], fold["n_captions"]) == (200, 1000) for fold in result["folds"])
    for direction in ("i2t", "t2i"):
        for name in ("r1", "r5", "r10", "medr", "meanr"):
            values = [fold[direction][name] for fold in folds]
            assert result[direction][name] == pytest.approx(sum(values) / 5, rel=1e-12)
        assert len({fold[direction]["meanr"] for fold in folds}) == 5
    assert result["rsum"] == pytest.approx(sum(fold["rsum"] for fold in folds) / 5, rel=1e-12)
    assert list(result) == ["protocol", "n_images", "n_captions", "i2t", "t2i", "rsum", "folds"]
    assert json.loads(json.dumps(result)) == result


def test_single_block_protocols_report_the_whole_matrix():
    result = evaluate_blocks("f30k", five_each(1000), [fold_with_rank(2)])
    # Every image has i2t rank 2; captions 0 and 1 of each image have t2i rank 1, the other three rank 0.
    assert result == {"protocol": "f30k", "n_images": 1000, "n_captions": 5000,
                      "i2t": {"r1": 0.0, "r5": 100.0, "r10": 100.0, "medr": 3.0, "meanr": 3.0},
                      "t2i": {"r1": 60.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.4},
                      "rsum": 460.0}
    sims = np.random.default_rng(1).standard_normal((3, 7))
    caption_image = np.array([0, 1, 1, 2, 2, 2, 2])
    result = evaluate_blocks(None, caption_image, [sims])
    assert result == {"protocol": "full", "n_images": 3, "n_captions": 7,
                      **retrieval_metrics(sims, caption_image)}


def test_wrong_blocks_are_errors():
    with pytest.raises(ItmatchError, match="protocol coco1k scores 5 block"):
        evaluate_blocks("coco1k", five_each(5000), [np.zeros((1, 1), dtype=np.float32)])
    with pytest.raises(ItmatchError, match=r"shape \(1000, 4999\), expected 1000 images x 5000 captions"):
        evaluate_blocks("f30k", five_each(1000), [np.zeros((1000, 4999), dtype=np.float32)])


def test_format_table(coco1k_result):
    table = format_table({**coco1k_result, "split": "testall"})
    assert table.splitlines() == [
        "protocol coco1k (testall: 5000 images, 25000 captions, mean of 5 folds)",
        "                R@1    R@5   R@10    medr   meanr",
        "image->text    20.0  100.0  100.0     3.0     3.0",
        "text->image    60.0  100.0  100.0     1.4     1.4",
        "rsum          480.0",
    ]
