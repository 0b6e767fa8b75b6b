"""Forward FLOP counts of the models' products, for cost estimates (``itmatch.papers.cost``) and the speed
benchmarks' FLOP floor: each model config says its own (``pair_mflop(words)``, ``encode_mflop(words)``) from
these terms, ``words`` the caption's tokens (``<start>``/``<end>`` included).

Only matrix products are counted (2 FLOPs a multiply-add), as ``torch.utils.flop_counter`` counts them; the
element-wise passes, softmaxes and norms are not. A pair count leaves out what is made once per image or caption
(the Gram matrices of the attention's context), and neither count includes work done once per call (folded weight
matrices, the GPO pooling weights kept per length). ``tests/test_flops.py`` holds every count to the products the
models actually run.
"""

from __future__ import annotations

#: BERT-base, the papers' BERT-family text encoder: (hidden size, layers, feed-forward width).
BERT_BASE = (768, 12, 3072)
#: Regions an image, for models whose config does not fix the number (the papers' 36).
REGIONS = 36


def linear(rows: int, inputs: int, outputs: int) -> float:
    """``rows`` vectors through an ``inputs -> outputs`` linear map."""
    return 2.0 * rows * inputs * outputs


def gru(steps: int, inputs: int, hidden: int, layers: int = 1, directions: int = 2) -> float:
    """A (bi-directional) GRU over ``steps`` time steps: three gates' input and hidden products a step."""
    first = linear(steps, inputs, 3 * hidden) + linear(steps, hidden, 3 * hidden)
    later = linear(steps, directions * hidden, 3 * hidden) + linear(steps, hidden, 3 * hidden)
    return directions * (first + (layers - 1) * later)


def cross_attention(queries: int, context: int, dim: int) -> float:
    """SCAN attention of ``queries`` over ``context`` vectors: the logits, the attended vectors, and their norms
    from the context's Gram matrix (``attention.normalised_weights``; the Gram matrix itself is made once per
    image or caption, not per pair)."""
    return 2 * 2.0 * queries * context * dim + 2.0 * queries * context * context


def global_vector(items: int, dim: int) -> float:
    """SGRAF's self-attended global vector of ``items`` local vectors: the local, global and common projections
    and the weighted sum."""
    return linear(items, dim, dim) + linear(1, dim, dim) + 2 * linear(items, dim, 1)


def graph_step(nodes: int, sim: int, conv: bool = False) -> float:
    """One full SGR step or HSR layer (folded query-key and value projections, the two edge products; with
    ``conv``, HSR's 3×3 convolution of the relation matrix)."""
    return linear(nodes, sim, 2 * sim) + 2 * 2.0 * nodes * nodes * sim + (2.0 * 9 * nodes * nodes if conv else 0.0)


def readout_step(nodes: int, sim: int, conv: bool = False) -> float:
    """The last SGR step or HSR layer computing one node only: its relation row (and with HSR's 3×3 convolution
    the row above, and the convolution of the node's row), the edge product and the value projection."""
    rows = 2 if conv else 1
    return (linear(rows, sim, sim) + 2.0 * rows * nodes * sim + 2.0 * nodes * sim + linear(1, sim, sim)
            + (2.0 * 9 * nodes if conv else 0.0))


def transformer_layer(tokens: int, dim: int, feed_forward: int) -> float:
    """One transformer encoder layer over ``tokens``: q, k, v and output projections, attention, feed-forward."""
    return linear(tokens, dim, 4 * dim) + 2 * 2.0 * tokens * tokens * dim + 2 * linear(tokens, dim, feed_forward)


def bert(tokens: int, dim: int = BERT_BASE[0], layers: int = BERT_BASE[1], feed_forward: int = BERT_BASE[2]) -> float:
    """A BERT-family encoder's layers over ``tokens`` (BERT-base by default)."""
    return layers * transformer_layer(tokens, dim, feed_forward)
