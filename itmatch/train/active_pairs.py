"""A training batch's score matrix whose gradient is recorded only where the loss reads it.

The hardest-negative hinge of a batch of B pairs reads at most 3B of its B² scores: each positive, the hardest
negative caption of each image and the hardest negative image of each caption, and only where the hinge is
positive. Every other score gets a zero gradient. A cross-attention model whose pair scores are independent of
one another (``Matcher.independent_pair_scores``: SGR, TSHSR; not SAF, whose BatchNorm pools the statistics of a
caption's pairs) can therefore be trained without recording the pair work of the other scores:

1. every score of the batch is computed without autograd, by the scoring engine (``score_encoded``);
2. the loss's gradient with respect to that matrix marks the scores it reads (``loss_of``);
3. only those pairs are scored again with autograd, caption by caption, and give the matrix its gradient.

The matrix keeps the values of step 1 everywhere: a re-scored pair adds its recorded score minus that score's
value, which is zero, so the loss reads exactly the scores step 2 marked. Putting the re-scored values in instead
would let rounding change a tie: two captions of one image in a batch give two equal rows (with dropout off),
and the loss could pick the unmarked one, a score without gradient (a hinge term's gradient lost). The loss and
the parameter gradients are those of the whole matrix scored with autograd, up to rounding. At batch 128 the pair
work recorded for the backward pass falls from 16,384 pairs to at most 384, and no pair activations are kept.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from itmatch.models.base import Encoding, Matcher
from itmatch.models.layers import weights_shared
from itmatch.scoring import default_tiling, score_encoded


def active_pair_scores(model: Matcher, images: Encoding, texts: Encoding,
                       loss_of: Callable[[torch.Tensor], torch.Tensor],
                       gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The score matrix (1, I, C) of ``images`` × ``texts`` (a single-head ``model`` in training mode), as the
    scoring engine computes it, with gradient at the scores whose loss gradient is non-zero.

    ``loss_of`` maps the (1, B, B) matrix of the global batch to its scalar loss. With data-parallel training
    ``gather`` (autograd-aware) maps this process's columns to that matrix; every process then calls this
    function once per step, as the gathers are collectives."""
    device = next(model.parameters()).device
    budget, caption_chunk = default_tiling(device)
    with torch.no_grad():
        plain = torch.from_numpy(score_encoded(model, images, [(np.arange(len(texts)), texts)], budget,
                                               caption_chunk))[None].to(device)
    columns = plain.clone().requires_grad_()
    with torch.enable_grad():
        (weights,) = torch.autograd.grad(loss_of(gather(columns) if gather else columns), columns)
    read = weights[0] != 0
    if not bool(read.any()):  # no score is read: record one pair anyway, so that the loss keeps a graph
        read[0, 0] = True
    captions, rows = read.T.nonzero(as_tuple=True)     # grouped by caption
    used, counts = captions.unique_consecutive(return_counts=True)
    image_sets = images.select(rows).split(counts.tolist())
    single = texts.split([1] * len(texts))
    with weights_shared():
        parts = [model.head_scores(image_set, single[c])[:, :, 0] for image_set, c in zip(image_sets, used.tolist())]
    recorded = torch.cat(parts, 1)[0].to(plain.dtype)
    where = (torch.zeros_like(rows), rows, captions)
    return plain.index_put(where, plain[where] + (recorded - recorded.detach()))  # step 1's values, the gradient
