"""HREM's neighbour batch sampling (in the paper, dropped from the authors' release): batches of captions whose
images come from the same clusters of image features, so every batch holds semantically close (hard) negatives.
"""

from __future__ import annotations

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.models.layers import l2norm


def image_clusters(features: np.ndarray, n_clusters: int, *, iterations: int = 20, seed: int = 0,
                   block: int = 1024) -> np.ndarray:
    """Spherical k-means of images by their mean region feature: (N, R, D) (memory-mapped is fine) -> (N,) ids.

    Features are read in blocks of ``block`` images, so a split never sits in RAM; the clustering runs on the
    (N, D) means. Deterministic given ``seed``.
    """
    if not 1 <= n_clusters <= len(features):
        raise ItmatchError(f"data.neighbour_clusters must lie in 1..{len(features)} (the train images), "
                           f"got {n_clusters}")
    means = torch.cat([torch.from_numpy(np.asarray(features[i:i + block], dtype=np.float32)).mean(1)
                       for i in range(0, len(features), block)])
    points = l2norm(means)
    gen = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(len(points), generator=gen)[:n_clusters]].clone()
    assign = torch.zeros(len(points), dtype=torch.long)
    for _ in range(iterations):
        assign = (points @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        empty = torch.bincount(assign, minlength=n_clusters) == 0
        centres = torch.where(empty[:, None], centres, l2norm(sums))
    return assign.numpy()


def neighbour_batches(cluster_of_caption: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The caption indices of ``epoch``'s batches, (n_batches, batch_size), a pure function of its arguments.

    The clusters are visited in a random order, the captions inside a cluster shuffled, the sequence cut into
    batches of ``batch_size`` (a last partial batch is dropped) and the batches shuffled. A batch straddles at
    most a few neighbouring clusters, so its negatives are close to its positives.
    """
    rng = np.random.default_rng([seed, epoch])
    cluster_rank = rng.permutation(int(cluster_of_caption.max()) + 1)[cluster_of_caption]
    order = np.lexsort((rng.random(len(cluster_rank)), cluster_rank))
    n_batches = len(order) // batch_size
    batches = order[: n_batches * batch_size].reshape(n_batches, batch_size)
    return batches[rng.permutation(n_batches)]
