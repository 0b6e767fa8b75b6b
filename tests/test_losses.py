"""The ranking loss against a loop over pairs and against the SGRAF authors' ContrastiveLoss."""

from __future__ import annotations

import pytest
import torch
from reference_train import contrastive_loss

from itmatch.losses import ranking_loss


def loop_loss(scores: torch.Tensor, margin: float, hardest: bool, same_image: torch.Tensor | None) -> float:
    """The definition, one positive pair at a time."""
    n = len(scores)
    total = 0.0
    for i in range(n):
        negatives = [j for j in range(n) if j != i and (same_image is None or not same_image[i, j])]
        captions = [max(0.0, margin + float(scores[i, j] - scores[i, i])) for j in negatives]
        images = [max(0.0, margin + float(scores[j, i] - scores[i, i])) for j in negatives]
        if hardest:
            total += max(captions, default=0.0) + max(images, default=0.0)
        else:
            total += sum(captions) + sum(images)
    return total


@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_the_definition(hardest: bool, masked: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(9, 9, generator=gen, dtype=torch.float64)
    images = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    same = images[:, None] == images[None, :] if masked else None
    got = float(ranking_loss(scores, margin=0.2, hardest_negative=hardest, same_image=same))
    assert got == pytest.approx(loop_loss(scores, 0.2, hardest, same), rel=1e-12)
    assert got > 0


@pytest.mark.parametrize("hardest", [True, False])
def test_equals_the_authors_loss_and_gradient(hardest: bool) -> None:
    base = torch.rand(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, theirs = base.clone().requires_grad_(), base.clone().requires_grad_()
    a = ranking_loss(ours, margin=0.2, hardest_negative=hardest)
    b = contrastive_loss(theirs, 0.2, hardest)
    a.backward()
    b.backward()
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)
    assert torch.equal(ours.grad, theirs.grad)


def test_masking_other_captions_of_the_same_image() -> None:
    # two pairs share an image: each one's other caption scores as high as its own, a violation only unmasked
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.1, 0.1, 0.9]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert float(ranking_loss(scores, same_image=same)) == pytest.approx(0.0)
    assert float(ranking_loss(scores)) == pytest.approx(4 * 0.2)


def test_rejects_a_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        ranking_loss(torch.zeros(3, 4))
