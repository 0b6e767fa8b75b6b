"""FAISS inner-product indexes over L2-normalised embeddings (inner product = cosine): which kind a gallery gets,
how it is built and trained, and how it is written.

The index is exact (``IndexFlatIP``) below ``IVF_MIN_IMAGES`` vectors and an inverted file (``IndexIVFFlat``,
nlist ≈ 4·√n) above, unless ``index_type`` says otherwise: ``ivfpq`` (``IndexIVFPQ``) keeps ``m`` bytes per
vector instead of 4·d, for galleries of millions (docs/scale.md). Inverted files are trained on a sample of at most
``TRAIN_SAMPLE`` vectors and filled ``ADD_BLOCK`` vectors at a time, from arrays that may be memory-mapped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_path

INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq")
#: Pictures an inverted file (its centroids, and an IVF-PQ's codebooks) is trained on, at most.
TRAIN_SAMPLE = 200_000
#: Embeddings added to a FAISS index at once.
ADD_BLOCK = 65_536
#: Galleries at least this large get an IVF index under ``index_type="auto"``.
IVF_MIN_IMAGES = 100_000


def choose_kind(n: int, index_type: str) -> str:
    """``flat`` or ``ivf`` for ``n`` vectors under ``index_type`` (auto: IVF from ``IVF_MIN_IMAGES``)."""
    if index_type not in INDEX_TYPES:
        raise ItmatchError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if index_type == "auto":
        return "ivf" if n >= IVF_MIN_IMAGES else "flat"
    return index_type


def make_faiss(vectors: np.ndarray | Sequence[np.ndarray], kind: str, nlist: int | None = None,
               m: int | None = None) -> Any:
    """A FAISS inner-product index over ``vectors`` (n, d), or over several (memory-mapped) arrays in turn:
    exact, IVF (nlist ≈ 4·√n) or IVF-PQ (``m`` bytes a vector, default ``default_m(d)``); an inverted file is
    trained on a fixed random sample of at most ``TRAIN_SAMPLE`` vectors."""
    import faiss

    parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    n, dim = sum(len(p) for p in parts), parts[0].shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = nlist or max(1, min(n, round(4 * math.sqrt(n))))
        needed = max(nlist, 256) if kind == "ivfpq" else nlist  # 256 centroids per PQ sub-vector
        if n < needed:
            raise ItmatchError(f"an {kind.upper()} index with {nlist} lists needs at least {needed} pictures to "
                               f"train on, got {n}; use --index-type flat or a smaller --nlist")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivfpq":
            m = m or default_m(dim)
            if dim % m:
                raise ItmatchError(f"--m {m} must divide the embedding size {dim}; try {default_m(dim)}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_sample(parts, TRAIN_SAMPLE))
        index.nprobe = max(1, nlist // 8)
    for part in parts:
        for start in range(0, len(part), ADD_BLOCK):
            index.add(np.ascontiguousarray(part[start:start + ADD_BLOCK], dtype=np.float32))
    return index


def default_m(dim: int) -> int:
    """IVF-PQ sub-vectors for embeddings of ``dim``: the largest divisor of ``dim`` up to ``dim / 4`` (four
    dimensions a byte; 32 bytes a picture for the demo's 128-d VSE)."""
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def _sample(parts: Sequence[np.ndarray], size: int) -> np.ndarray:
    """At most ``size`` rows of the arrays ``parts`` taken together, a fixed random choice, float32."""
    n = sum(len(p) for p in parts)
    pick = np.sort(np.random.default_rng(0).choice(n, size, replace=False)) if n > size else np.arange(n)
    offsets = np.cumsum([0] + [len(p) for p in parts])
    return np.ascontiguousarray(np.concatenate([np.asarray(part[pick[(pick >= lo) & (pick < hi)] - lo])
                                                for part, lo, hi in zip(parts, offsets[:-1], offsets[1:])]),
                                dtype=np.float32)


def save_faiss(search_index: Any, path: Path) -> None:
    """Write a FAISS index to ``path`` atomically (a reader never sees half a file)."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(search_index, str(tmp))
