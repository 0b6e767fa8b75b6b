"""Retrieval metrics of a score matrix: ranks both ways, R@K, medr, meanr and rsum, as SCAN/SGRAF define them.

``sims`` is ``(n_images, n_captions)`` (numpy, a memmap, or a torch tensor on any device); ``caption_image`` is an
int64 ``(n_captions,)`` array giving each caption's image (any number >= 1 of captions per image, in any order).
An image counts as found by image->text retrieval within K if any of its captions ranks below K.

A rank is a 0-based position in a **stable descending** sort of one query's scores: among equal scores the lower
index comes first. The authors sort with ``np.argsort(...)[::-1]``, whose order among ties is undefined; for
distinct scores both definitions agree exactly.

Ranks are counted rather than sorted: the position of an item in a stable descending sort is the number of items
with a higher score plus the number of equal-scored items with a lower index. That is one pass of comparisons per
block of rows, O(n) instead of O(n log n) per query, and the same order a stable sort gives. Rows are processed in
blocks of about ``CHUNK_ELEMENTS`` scores (cache-sized on a CPU), so ranking a 5,000 x 25,000 matrix takes about
16 MB on top of the matrix, and a memmapped matrix is read block by block.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from itmatch.errors import ItmatchError

Scores = np.ndarray | torch.Tensor

CHUNK_ELEMENTS = 1 << 20
"""Scores per block of rows by default (a block's temporaries take a few bytes per score)."""

RECALL_AT = (1, 5, 10)


def check_caption_image(caption_image: np.ndarray | torch.Tensor, n_images: int) -> np.ndarray:
    """``caption_image`` as int64 after checking that it is 1-D, in ``[0, n_images)`` and covers every image."""
    if isinstance(caption_image, torch.Tensor):
        caption_image = caption_image.detach().cpu().numpy()
    cap = np.asarray(caption_image)
    if cap.ndim != 1 or not (np.issubdtype(cap.dtype, np.integer) or cap.size == 0):
        raise ItmatchError(f"caption_image must be a 1-D integer array (one image index per caption), "
                           f"got shape {cap.shape} of {cap.dtype}")
    cap = cap.astype(np.int64, copy=False)
    if n_images == 0 or cap.size == 0:
        raise ItmatchError(f"nothing to evaluate: {n_images} images and {cap.size} captions")
    if cap.min() < 0 or cap.max() >= n_images:
        bad = int(cap.min() if cap.min() < 0 else cap.max())
        raise ItmatchError(f"caption_image refers to image {bad}, but there are {n_images} images")
    missing = np.flatnonzero(np.bincount(cap, minlength=n_images) == 0)
    if missing.size:
        raise ItmatchError(f"image {missing[0]} has no caption ({missing.size} images have none); "
                           "every image needs at least one caption")
    return cap


def i2t_ranks(sims: Scores, caption_image: np.ndarray, *, chunk_size: int | None = None) -> np.ndarray:
    """Image->text rank of each image: the best (lowest) rank of any of its captions in its row.

    Returns int64 ``(n_images,)``. ``chunk_size`` is the number of rows scored at once (default: about
    ``CHUNK_ELEMENTS`` scores).
    """
    cap = _caption_tensor(sims, caption_image)
    return torch.cat([_i2t_block(block, rows, cap) for rows, block in _row_blocks(sims, chunk_size)]).cpu().numpy()


def t2i_ranks(sims: Scores, caption_image: np.ndarray, *, chunk_size: int | None = None) -> np.ndarray:
    """Text->image rank of each caption: the position of its own image in its column.

    Returns int64 ``(n_captions,)``. Counts are accumulated over blocks of ``chunk_size`` rows.
    """
    cap = _caption_tensor(sims, caption_image)
    own = _own_scores(sims, cap)
    ranks = torch.zeros(len(cap), dtype=torch.int64, device=cap.device)
    for rows, block in _row_blocks(sims, chunk_size):
        ranks += _t2i_block(block, rows, cap, own)
    return ranks.cpu().numpy()


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent of ranks < K), medr = floor(median) + 1 and meanr = mean + 1 of 0-based ``ranks``."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ItmatchError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    result = {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / len(ranks)) for k in RECALL_AT}
    result["medr"] = float(np.floor(np.median(ranks)) + 1)
    result["meanr"] = float(ranks.mean() + 1)
    return result


def retrieval_metrics(sims: Scores, caption_image: np.ndarray, *,
                      chunk_size: int | None = None) -> dict[str, dict[str, float] | float]:
    """``{"i2t": summary, "t2i": summary, "rsum": float}`` of ``sims`` (see ``summarize`` for a summary's keys)."""
    i2t = summarize(i2t_ranks(sims, caption_image, chunk_size=chunk_size))
    t2i = summarize(t2i_ranks(sims, caption_image, chunk_size=chunk_size))
    return {"i2t": i2t, "t2i": t2i, "rsum": _rsum(i2t, t2i)}


def _rsum(i2t: dict[str, float], t2i: dict[str, float]) -> float:
    """R@1 + R@5 + R@10 of image->text plus the same of text->image (summed in the authors' order)."""
    return sum(summary[f"r{k}"] for summary in (i2t, t2i) for k in RECALL_AT)


def _caption_tensor(sims: Scores, caption_image: np.ndarray) -> torch.Tensor:
    """Validate ``sims`` against ``caption_image``; return the latter as int64 on ``sims``' device."""
    if sims.ndim != 2:
        raise ItmatchError(f"the score matrix must be 2-D (images x captions), got shape {tuple(sims.shape)}")
    n_images, n_captions = sims.shape
    cap = check_caption_image(caption_image, n_images)
    if len(cap) != n_captions:
        raise ItmatchError(f"the score matrix has {n_captions} captions (columns) but caption_image has "
                           f"{len(cap)} entries; they must match")
    device = sims.device if isinstance(sims, torch.Tensor) else torch.device("cpu")
    return torch.from_numpy(cap).to(device)


def _as_tensor(part: Scores) -> torch.Tensor:
    """A slice of the scores as a floating-point tensor (integer scores become float64, which is exact)."""
    tensor = part.detach() if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
    return tensor if tensor.is_floating_point() else tensor.double()


def _row_blocks(sims: Scores, chunk_size: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(row indices, scores of those rows)`` block by block, refusing NaN (it has no place in an order)."""
    n_images, n_captions = sims.shape
    if chunk_size is not None and chunk_size < 1:
        raise ItmatchError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    step = chunk_size or max(1, CHUNK_ELEMENTS // n_captions)
    for start in range(0, n_images, step):
        block = _as_tensor(sims[start:start + step])
        if torch.isnan(block).any():
            raise ItmatchError(f"the score matrix has NaN in rows {start}..{start + len(block) - 1}; "
                               "scores must be numbers to be ranked")
        yield torch.arange(start, start + len(block), device=block.device), block


def _own_scores(sims: Scores, cap: torch.Tensor) -> torch.Tensor:
    """``(n_captions,)`` score of each caption with its own image."""
    if isinstance(sims, torch.Tensor):
        return _as_tensor(sims[cap, torch.arange(len(cap), device=cap.device)])
    return _as_tensor(sims[cap.numpy(), np.arange(len(cap))])


def _i2t_block(block: torch.Tensor, rows: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Ranks of the images ``rows`` whose scores are ``block`` ``(len(rows), n_captions)``.

    An image's best caption is its highest-scored one, the lowest index among equals (it comes first in a stable
    sort); its rank counts the higher scores plus the equal scores at lower indices.
    """
    own = cap[None, :] == rows[:, None]
    best = torch.where(own, block, float("-inf")).amax(dim=1, keepdim=True)
    at_best = block == best
    first = (own & at_best).to(torch.uint8).argmax(dim=1, keepdim=True)
    before = torch.arange(block.shape[1], device=block.device)[None, :] < first
    return torch.count_nonzero((block > best) | (at_best & before), dim=1)


def _t2i_block(block: torch.Tensor, rows: torch.Tensor, cap: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Each caption's count, among the images ``rows``, of those that come before its own image:
    a higher score, or an equal score at a lower image index."""
    tied_before = (block == own[None, :]) & (rows[:, None] < cap[None, :])
    return torch.count_nonzero((block > own[None, :]) | tied_before, dim=0)
