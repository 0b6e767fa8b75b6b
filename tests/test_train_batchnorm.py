"""SAF's per-caption BatchNorm, computed for all captions at once, against the authors' loop over captions."""

from __future__ import annotations

import copy

import torch
from reference_train import attention_filtration

from itmatch.models.layers import length_mask
from itmatch.models.sgraf import AttentionFiltration


def test_batched_saf_batchnorm_equals_the_per_caption_loop() -> None:
    torch.manual_seed(0)
    batched = AttentionFiltration(16).train()
    with torch.no_grad():
        batched.bn.weight.fill_(1.3)
        batched.bn.bias.fill_(-0.2)
        batched.bn.running_mean.fill_(0.4)
        batched.bn.running_var.fill_(2.0)
    looped = copy.deepcopy(batched)
    n_img, words = 7, torch.tensor([9, 6, 6, 3, 1])  # captions longest first, as in a training batch
    n_node = int(words.max()) + 1
    mask = length_mask(words + 1, n_node)
    nodes = torch.randn(n_img, len(words), n_node, 16) * mask[None, :, :, None]
    weights = torch.randn(n_img, len(words), 16)

    x_batched = nodes.clone().requires_grad_()
    out_batched = batched(x_batched, mask)
    (out_batched * weights).sum().backward()

    x_looped = nodes.clone().requires_grad_()
    out_looped = torch.stack([attention_filtration(looped, x_looped[:, c, : int(n) + 1])
                              for c, n in enumerate(words)], 1)
    (out_looped * weights).sum().backward()

    assert (out_batched - out_looped).abs().max() <= 1e-5
    assert (x_batched.grad - x_looped.grad).abs().max() <= 1e-5
    for a, b in zip(batched.parameters(), looped.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-5
    # the loop calls the BatchNorm once per caption: five updates of the running statistics, in caption order
    assert int(batched.bn.num_batches_tracked) == int(looped.bn.num_batches_tracked) == len(words)
    assert (batched.bn.running_mean - looped.bn.running_mean).abs().max() <= 1e-5
    assert (batched.bn.running_var - looped.bn.running_var).abs().max() <= 1e-5
    assert (batched.bn.running_mean - 0.4).abs().max() > 1e-3  # the statistics did move
