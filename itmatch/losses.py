"""Ranking losses over a training batch's score matrix.

A batch is B (image, caption) pairs; ``scores[i, j]`` scores image i against caption j, so the diagonal holds the
positive pairs. The loss is the bidirectional hinge of VSE++ as the SGRAF authors use it (their
``ContrastiveLoss``): for every positive, each negative caption of its image and each negative image of its
caption costs ``max(0, margin + s_negative - s_positive)``; with ``hardest_negative`` only the largest cost per row
and per column counts; the costs are summed over the batch, not averaged.
"""

from __future__ import annotations

import torch


def ranking_loss(scores: torch.Tensor, *, margin: float = 0.2, hardest_negative: bool = True,
                 same_image: torch.Tensor | None = None) -> torch.Tensor:
    """Summed bidirectional hinge loss of a (B, B) score matrix whose diagonal holds the positive pairs.

    ``hardest_negative`` keeps the largest violation per image (row) and per caption (column), the authors'
    default (their ``--max_violation``); off, every violating negative counts. ``same_image`` (B, B) bool marks
    pairs that are not negatives although off the diagonal (two captions of one image in the batch). The
    authors pass none: a second caption of the same image is then a negative, as in their training.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    positive = scores.diagonal()
    not_negative = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if same_image is not None:
        not_negative = not_negative | same_image
    cost_caption = (margin + scores - positive[:, None]).clamp(min=0).masked_fill(not_negative, 0)
    cost_image = (margin + scores - positive[None, :]).clamp(min=0).masked_fill(not_negative, 0)
    if hardest_negative:
        return cost_caption.max(1).values.sum() + cost_image.max(0).values.sum()
    return cost_caption.sum() + cost_image.sum()
