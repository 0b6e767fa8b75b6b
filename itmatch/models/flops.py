"""Forward FLOP counts of the models' work, for cost estimates (``itmatch.papers.cost``): each model config says
its own (``pair_mflop(words)``, ``encode_mflop()``) from these shared terms.

At the papers' sizes (d 1024, similarity 256, 36 regions): similarity vectors cost ``2 d k`` per node, a graph step
about ``3 · 2 k²`` per node (SGR) or ``2 · 2 k²`` (HSR, two folded products), SCAN attention about 2 MFLOP a pair;
a Bi-GRU caption and the region projection about 380 MFLOP together, BERT-base about 2,950 with the regions, and
HREM's fragment transformer layers about 630 more.
"""

from __future__ import annotations

#: Encoding one image and one caption, by text encoder.
ENCODE_MFLOP = {"bigru": 380.0, "bert": 2950.0}
#: HREM's fragment-level relation layers, per image and caption.
FRAGMENT_MFLOP = 630.0
#: SCAN attention of one pair.
ATTENTION_MFLOP = 2.0


def projection_mflop(dim: int, sim: int) -> float:
    """One similarity vector: the ``dim -> sim`` projection of a squared difference."""
    return 2 * dim * sim / 1e6


def square_mflop(sim: int, products: int) -> float:
    """``products`` ``sim × sim`` products of one node (a graph or HSR step)."""
    return products * 2 * sim * sim / 1e6
