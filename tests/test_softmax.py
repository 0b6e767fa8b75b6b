"""The pass-by-pass softmax over a short last dimension equals PyTorch's, values and gradients."""

from __future__ import annotations

import pytest
import torch

from itmatch.models import softmax as short


@pytest.mark.parametrize("width", [1, 3, 7, 8, 13, 15, 16, 17, 36])
def test_softmax_equals_torch_with_masked_entries(width):
    torch.manual_seed(width)
    x = torch.randn(50, 9, width) * 4
    x[:, :, width // 2 + 1:] = float("-inf")  # masked columns, as the edges' and the attention's padding
    expected = torch.softmax(x.double(), dim=2)
    assert short._short(x, 2) == (width < short._register_floats())
    for got in (short.softmax(x, dim=2), short.softmax(x, dim=-1)):
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=5e-7)
        assert got.dtype == torch.float32 and got.shape == x.shape


@pytest.mark.parametrize("width", [5, 20])
def test_softmax_gradient_equals_torch(width):
    torch.manual_seed(0)
    x = torch.randn(40, 6, width, dtype=torch.float32)
    x[:, :, -1] = float("-inf")
    upstream = torch.randn(40, 6, width)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    (short.softmax(mine, dim=2) * upstream).sum().backward()
    (torch.softmax(ref, dim=2) * upstream).sum().backward()
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-6)
    assert mine.grad[:, :, -1].abs().max() == 0 and mine.grad.abs().max() > 0.1
    out = torch.softmax(x, dim=2)
    torch.testing.assert_close(short.softmax_backward(upstream, out, 2),
                               torch.ops.aten._softmax_backward_data(upstream, out, 2, out.dtype), rtol=0, atol=1e-6)


def test_only_a_short_last_dimension_takes_the_passes():
    x = torch.randn(4, 5, 6)
    assert short._short(x, 2) and short._short(x, -1)
    assert not short._short(x, 1)                        # not the last dimension: PyTorch's kernel
    assert not short._short(x.double(), 2)               # float32 only (autocast's bf16 keeps PyTorch's)
    assert not short._short(torch.randn(4, 64), 1)       # a whole register or more
