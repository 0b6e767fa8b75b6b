"""The scoring path of the similarity vectors (blocked, in-place, cached folded weights) against the batched
autograd expression, and the caches' invalidation (folded weights, region Gram matrices)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itmatch.models import attention
from itmatch.models.attention import cross_attention, similarity_vectors
from itmatch.models.layers import cached_weights, l2norm, weights_shared
from itmatch.models.region_word import RegionEncoding


@pytest.mark.parametrize("queries_per_set", [3, 20])  # fewer / more query vectors than context positions
@pytest.mark.parametrize("lengths", [None, [6, 4, 1]])
@pytest.mark.parametrize("block", [5 * 16, 80 * 16])  # rows of one set split / 2 of 3 sets grouped
def test_blocked_scoring_path_equals_the_batched_expression(monkeypatch, queries_per_set, lengths, block):
    torch.manual_seed(0)
    context = l2norm(torch.randn(3, 6, 16))
    queries = l2norm(torch.randn(2, queries_per_set, 16))
    project = nn.Linear(16, 8)
    context_lengths = None if lengths is None else torch.tensor(lengths)
    expected = l2norm(project(cross_attention(context, queries, 9.0, context_lengths, minus_queries=True)
                              .square()))
    assert expected.requires_grad  # the batched expression (autograd recording)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", block)
    with torch.inference_mode():
        blocked = similarity_vectors(context, queries, 9.0, project, context_lengths)
    assert blocked.shape == (3, 2, queries_per_set, 8)
    torch.testing.assert_close(blocked, expected.detach(), rtol=0, atol=1e-6)


def test_scoring_follows_a_changed_projection_weight():
    """The scoring path keeps the projection's transposed weight; an in-place update must not be scored with the
    old one."""
    torch.manual_seed(0)
    context, queries = l2norm(torch.randn(3, 6, 16)), l2norm(torch.randn(2, 20, 16))
    project = nn.Linear(16, 8)
    with torch.no_grad():
        before = similarity_vectors(context, queries, 9.0, project)
        project.weight.mul_(-2.0).add_(0.1)
        after = similarity_vectors(context, queries, 9.0, project)
    expected = l2norm(project(cross_attention(context, queries, 9.0, minus_queries=True).square())).detach()
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 0.1


def test_cached_weights_are_recomputed_when_a_parameter_changes():
    layer = nn.Linear(4, 4)
    calls = []

    def compute():
        calls.append(1)
        return layer.weight.T @ layer.weight

    with torch.no_grad():
        first = cached_weights(layer, compute)
        assert cached_weights(layer, compute) is first and len(calls) == 1
        layer.weight.add_(1.0)  # an optimizer step changes the parameter in place
        torch.testing.assert_close(cached_weights(layer, compute), layer.weight.T @ layer.weight)
    assert len(calls) == 2
    cached_weights(layer, compute)  # recording autograd: never cached
    assert len(calls) == 3


def test_weights_shared_computes_once_per_block_with_autograd():
    """Inside ``weights_shared`` the recorded product is made once for all calls, and its gradient collects every
    use: the same gradient as a product per call."""
    layer = nn.Linear(4, 4)
    calls = []

    def compute():
        calls.append(1)
        return layer.weight.T @ layer.weight

    x = torch.randn(3, 4)
    with weights_shared():
        first = cached_weights(layer, compute)
        assert cached_weights(layer, compute) is first and first.requires_grad and len(calls) == 1
        total = (x @ first).sum() + (x @ cached_weights(layer, compute)).square().sum()
    total.backward()
    shared = layer.weight.grad.clone()
    layer.weight.grad = None
    # outside the block: a product per call
    ((x @ cached_weights(layer, compute)).sum() + (x @ cached_weights(layer, compute)).square().sum()).backward()
    assert len(calls) == 3
    torch.testing.assert_close(shared, layer.weight.grad)


def test_cached_weights_work_for_a_model_made_under_inference_mode():
    """Inference tensors have no version counter: the weights are computed each time, never cached stale."""
    with torch.inference_mode():
        layer = nn.Linear(4, 4)
        first = cached_weights(layer, lambda: layer.weight.T @ layer.weight)
        layer.weight.add_(1.0)
        torch.testing.assert_close(cached_weights(layer, lambda: layer.weight.T @ layer.weight),
                                   layer.weight.T @ layer.weight)
    assert not torch.equal(first, layer.weight.T @ layer.weight)


@pytest.mark.parametrize("block", [5 * 16, 80 * 16, 1 << 20])
def test_blocked_backward_equals_autograd_of_the_batched_expression(monkeypatch, block):
    """Training's blocked forward and backward (ProjectedSquares) give the batched expression's values and the
    gradients of every input (context, queries, the projection), float64."""
    torch.manual_seed(1)
    context = l2norm(torch.randn(3, 6, 16, dtype=torch.float64)).requires_grad_()
    queries = l2norm(torch.randn(2, 20, 16, dtype=torch.float64)).requires_grad_()
    project = nn.Linear(16, 8).double()
    lengths = torch.tensor([6, 4, 1])
    upstream = torch.randn(3, 2, 20, 8, dtype=torch.float64)
    params = [context, queries, project.weight, project.bias]

    expected = l2norm(project(cross_attention(context, queries, 9.0, lengths, minus_queries=True).square()))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), params)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", block)
    blocked = similarity_vectors(context, queries, 9.0, project, lengths)
    grads = torch.autograd.grad((blocked * upstream).sum(), params)
    torch.testing.assert_close(blocked, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_region_gram_is_kept_until_the_regions_or_the_grad_mode_change():
    """Training computes a batch's Gram matrices once for all its caption chunks (``RegionEncoding.gram``): the
    same tensor while nothing changed, a fresh one after an in-place change or under another grad mode, and no
    cache at all for inference tensors."""
    regions = torch.randn(3, 5, 4)
    encoding = RegionEncoding(regions=regions, glob=None)
    first = encoding.gram()
    torch.testing.assert_close(first, regions @ regions.transpose(1, 2))
    assert encoding.gram() is first
    with torch.no_grad():
        assert encoding.gram() is not first  # another grad mode
    regions.mul_(2.0)
    torch.testing.assert_close(encoding.gram(), 4 * first)
    with torch.inference_mode():
        frozen = RegionEncoding(regions=torch.randn(2, 5, 4), glob=None)
        assert frozen.gram() is not frozen.gram()


def test_prepared_region_grams_are_carried_and_sliced():
    """``with_grams`` makes the Gram matrices once; ``select`` slices them with the regions (the scoring
    engine's tiles), and ``gram``/``reused_gram`` return them; without them and outside training
    ``reused_gram`` is None."""
    regions = torch.randn(4, 5, 3)
    plain = RegionEncoding(regions=regions, glob=None)
    with torch.no_grad():
        assert plain.grams is None and plain.reused_gram() is None
        prepared = plain.with_grams()
        torch.testing.assert_close(prepared.reused_gram(), regions @ regions.transpose(1, 2))
    for index in (slice(1, 3), torch.tensor([3, 0])):
        part = prepared.select(index)
        torch.testing.assert_close(part.gram(), part.regions @ part.regions.transpose(1, 2))
