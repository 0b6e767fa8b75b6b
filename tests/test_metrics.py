"""Retrieval metrics: hand-computed ranks, the stable tie rule, and parity with the authors' per-query loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itmatch import metrics
from itmatch.errors import ItmatchError
from itmatch.metrics import i2t_ranks, retrieval_metrics, summarize, t2i_ranks

# 3 images with 1, 2 and 4 captions.
CAPTION_IMAGE = np.array([0, 1, 1, 2, 2, 2, 2])
SIMS = np.array([
    # c0    c1    c2    c3    c4    c5    c6
    [0.90, 0.10, 0.80, 0.30, 0.20, 0.50, 0.40],  # image 0 owns c0 (0.90, the top): rank 0
    [0.70, 0.20, 0.60, 0.90, 0.10, 0.55, 0.45],  # image 1 owns c1, c2; c2 (0.60) is after c3, c0: rank 2
    [0.85, 0.80, 0.70, 0.15, 0.25, 0.65, 0.35],  # image 2 owns c3..c6; c5 (0.65) is after c0, c1, c2: rank 3
], dtype=np.float32)
# Text->image, column by column: how many images score the caption higher than its own image does.
# c0: [.90 .70 .85] own 0 -> 0;  c1: [.10 .20 .80] own 1 -> 1;  c2: [.80 .60 .70] own 1 -> 2
# c3: [.30 .90 .15] own 2 -> 2;  c4: [.20 .10 .25] own 2 -> 0;  c5: [.50 .55 .65] own 2 -> 0
# c6: [.40 .45 .35] own 2 -> 2
I2T = [0, 2, 3]
T2I = [0, 1, 2, 2, 0, 0, 2]


def authors_i2t(sims: np.ndarray) -> tuple[tuple[float, ...], np.ndarray]:
    """SCAN/SGRAF ``i2t``, literally (5 captions per image)."""
    npts = sims.shape[0]
    ranks = np.zeros(npts)
    for index in range(npts):
        inds = np.argsort(sims[index])[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    return _authors_summary(ranks), ranks


def authors_t2i(sims: np.ndarray) -> tuple[tuple[float, ...], np.ndarray]:
    """SCAN/SGRAF ``t2i``, literally (5 captions per image)."""
    npts = sims.shape[0]
    ranks = np.zeros(5 * npts)
    sims = sims.T
    for index in range(npts):
        for i in range(5):
            inds = np.argsort(sims[5 * index + i])[::-1]
            ranks[5 * index + i] = np.where(inds == index)[0][0]
    return _authors_summary(ranks), ranks


def _authors_summary(ranks: np.ndarray) -> tuple[float, ...]:
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    medr = np.floor(np.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return r1, r5, r10, medr, meanr


def stable_i2t(sims: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Naive image->text ranks with a stable descending sort, any number of captions per image."""
    ranks = []
    for image, row in enumerate(sims):
        order = np.argsort(-row, kind="stable")
        ranks.append(min(np.where(order == c)[0][0] for c in np.flatnonzero(caption_image == image)))
    return np.array(ranks)


def stable_t2i(sims: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Naive text->image ranks with a stable descending sort."""
    return np.array([np.where(np.argsort(-sims[:, c], kind="stable") == caption_image[c])[0][0]
                     for c in range(sims.shape[1])])


def test_hand_computed_ranks_with_uneven_captions():
    np.testing.assert_array_equal(i2t_ranks(SIMS, CAPTION_IMAGE), I2T)
    np.testing.assert_array_equal(t2i_ranks(SIMS, CAPTION_IMAGE), T2I)


def test_hand_computed_metrics():
    result = retrieval_metrics(SIMS, CAPTION_IMAGE)
    # i2t ranks [0, 2, 3]: one of three at rank 0; median 2 -> medr 3; mean 5/3 -> meanr 8/3.
    assert result["i2t"] == pytest.approx({"r1": 100 / 3, "r5": 100.0, "r10": 100.0, "medr": 3.0, "meanr": 8 / 3})
    # t2i ranks [0, 1, 2, 2, 0, 0, 2]: three of seven at 0; sorted median 1 -> medr 2; mean 1 -> meanr 2.
    assert result["t2i"] == pytest.approx({"r1": 300 / 7, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 2.0})
    assert result["rsum"] == pytest.approx(100 / 3 + 200 + 300 / 7 + 200)
    assert all(type(v) is float for d in (result["i2t"], result["t2i"]) for v in d.values())
    assert type(result["rsum"]) is float


def test_recall_counts_ranks_below_k():
    ranks = np.array([0, 4, 5, 9, 10, 12])
    assert summarize(ranks) == {"r1": 100 / 6, "r5": 200 / 6, "r10": 400 / 6, "medr": 8.0, "meanr": 40 / 6 + 1}


def test_ties_follow_the_stable_rule():
    """Among equal scores the lower index comes first: the lower caption for i2t, the lower image for t2i."""
    flat = np.zeros((3, 7), dtype=np.float32)
    np.testing.assert_array_equal(i2t_ranks(flat, CAPTION_IMAGE), [0, 1, 3])  # each image's first caption
    np.testing.assert_array_equal(t2i_ranks(flat, CAPTION_IMAGE), CAPTION_IMAGE)  # each caption's own image

    sims = np.array([[0.5, 0.5, 0.1],
                     [0.5, 0.2, 0.5]], dtype=np.float32)
    caption_image = np.array([0, 1, 1])
    # Image 0: its c0 ties with c1 and has the lower index -> 0. Image 1: best own score 0.5 (c2) ties with c0,
    # which comes first -> 1 (c1, also its own, scores lower).
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image), [0, 1])
    # c0: tie between image 0 (own) and image 1 -> 0. c1: image 0 scores 0.5 > 0.2 -> 1.
    # c2: own image 1 scores 0.5, image 0 only 0.1 -> 0.
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image), [0, 1, 0])


def test_infinite_scores_are_ranked():
    inf = np.inf
    sims = np.array([[inf, -inf, -inf],
                     [-inf, -inf, -inf]])
    caption_image = np.array([0, 1, 1])
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image), [0, 1])
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image), [0, 1, 1])


@pytest.mark.parametrize("n_images, chunk_size", [(1, None), (7, None), (23, 1), (23, 4), (40, 7), (40, 40)])
def test_matches_the_authors_loops(n_images, chunk_size):
    rng = np.random.default_rng(n_images)
    sims = rng.standard_normal((n_images, 5 * n_images)).astype(np.float32)
    caption_image = np.arange(5 * n_images) // 5
    (r, i2t), (ri, t2i) = authors_i2t(sims), authors_t2i(sims)
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image, chunk_size=chunk_size), i2t)
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image, chunk_size=chunk_size), t2i)
    result = retrieval_metrics(sims, caption_image, chunk_size=chunk_size)
    assert tuple(result["i2t"].values()) == r  # exactly the same floats
    assert tuple(result["t2i"].values()) == ri
    assert result["rsum"] == r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2]


def test_default_chunking_splits_rows(monkeypatch):
    rng = np.random.default_rng(1)
    sims = rng.standard_normal((30, 150)).astype(np.float32)
    caption_image = np.arange(150) // 5
    whole_i2t, whole_t2i = i2t_ranks(sims, caption_image), t2i_ranks(sims, caption_image)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 400)  # two rows (300 scores) per block
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image), whole_i2t)
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image), whole_t2i)
    np.testing.assert_array_equal(whole_i2t, authors_i2t(sims)[1])


def test_numpy_torch_and_memmap_inputs_agree(tmp_path):
    rng = np.random.default_rng(2)
    sims = rng.standard_normal((12, 60))
    caption_image = np.arange(60) // 5
    expected = retrieval_metrics(sims, caption_image)
    assert retrieval_metrics(torch.from_numpy(sims), torch.from_numpy(caption_image)) == expected
    assert retrieval_metrics(torch.from_numpy(sims).requires_grad_(), caption_image) == expected
    np.save(tmp_path / "sims.npy", sims)
    assert retrieval_metrics(np.load(tmp_path / "sims.npy", mmap_mode="r"), caption_image) == expected
    assert retrieval_metrics((sims * 1000).astype(np.int32), caption_image) == \
        retrieval_metrics((sims * 1000).astype(np.int32).astype(np.float64), caption_image)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_matches_a_naive_stable_sort(data):
    """Any captions-per-image layout, heavy ties and infinities: equal to per-query stable sorts."""
    counts = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=6), label="captions per image")
    caption_image = np.repeat(np.arange(len(counts)), counts)
    values = st.sampled_from([-np.inf, -1.0, 0.0, 0.25, 1.0, np.inf])
    sims = np.array(data.draw(st.lists(values, min_size=len(counts) * len(caption_image),
                                       max_size=len(counts) * len(caption_image)), label="scores"),
                    dtype=np.float32).reshape(len(counts), len(caption_image))
    chunk_size = data.draw(st.one_of(st.none(), st.integers(1, len(counts))), label="chunk_size")
    np.testing.assert_array_equal(i2t_ranks(sims, caption_image, chunk_size=chunk_size),
                                  stable_i2t(sims, caption_image))
    np.testing.assert_array_equal(t2i_ranks(sims, caption_image, chunk_size=chunk_size),
                                  stable_t2i(sims, caption_image))


@pytest.mark.parametrize("sims, caption_image, message", [
    (np.zeros(7), CAPTION_IMAGE, "must be 2-D"),
    (np.zeros((3, 6)), CAPTION_IMAGE, "has 6 captions"),
    (np.zeros((3, 7)), np.array([0, 1, 1, 2, 2, 2, 3]), "refers to image 3, but there are 3 images"),
    (np.zeros((3, 7)), np.array([0, -1, 1, 2, 2, 2, 2]), "refers to image -1"),
    (np.zeros((3, 7)), np.array([0, 0, 0, 2, 2, 2, 2]), "image 1 has no caption"),
    (np.zeros((3, 7)), CAPTION_IMAGE.astype(float), "1-D integer array"),
    (np.zeros((0, 0)), np.zeros(0, dtype=np.int64), "nothing to evaluate"),
    (np.where(np.eye(3, 7) > 0, np.nan, 0.0), CAPTION_IMAGE, "NaN"),
])
def test_bad_input_is_a_clear_error(sims, caption_image, message):
    for ranks in (i2t_ranks, t2i_ranks):
        with pytest.raises(ItmatchError, match=message):
            ranks(sims, caption_image)


def test_bad_chunk_size_and_ranks():
    with pytest.raises(ItmatchError, match="chunk_size"):
        i2t_ranks(SIMS, CAPTION_IMAGE, chunk_size=0)
    with pytest.raises(ItmatchError, match="non-empty 1-D"):
        summarize(np.array([]))
