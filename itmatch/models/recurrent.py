"""A one-layer (bi-directional) GRU over packed sequences for CPU training, equal to ``nn.GRU``'s.

``nn.GRU``'s CPU backward pass over a packed batch is autograd through every time step: each step's slice of the
input gates gets a gradient the size of all of them (zero-filled, then added), the recurrent weight's gradient
is a thin product added per step, and the padded output is copied back and forth. Here the recurrence is one
autograd ``Function`` per direction with a hand-written backward pass: the input gates of all steps come from one
product (autograd's), their gradients are written into one buffer, and the recurrent weight's gradient is one
product over all steps. The math is PyTorch's GRU (gates r, z, n in that order):
``r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)``, ``z = σ(...)``, ``n = tanh(x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn))``,
``h' = (1 - z) ⊙ n + z ⊙ h``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


def padded_gru(gru: nn.GRU, packed: PackedSequence) -> torch.Tensor:
    """``pad_packed_sequence(gru(packed)[0], batch_first=True)[0]`` for a one-layer GRU with biases: (B, T, H) or
    (B, T, 2H) with the directions concatenated, zero past each length. The padded result is scattered from the
    packed one in one indexed copy (whose backward is one gather: ``pad_packed_sequence``'s copies the padded
    gradient once per step)."""
    steps = [int(n) for n in packed.batch_sizes]
    outputs = []
    for suffix, reverse in [("", False), ("_reverse", True)][:1 + gru.bidirectional]:
        weights = [getattr(gru, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        gates = torch.addmm(weights[2], packed.data, weights[0].T)
        outputs.append(GRURecurrence.apply(gates, weights[1], weights[3], steps, reverse))
    data = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
    n_seq, n_step = steps[0], len(steps)
    position = torch.cat([torch.arange(n) for n in steps])             # rank in length order, per packed row
    if packed.sorted_indices is not None:
        position = packed.sorted_indices.cpu()[position]
    time = torch.repeat_interleave(torch.arange(n_step), packed.batch_sizes)
    flat = (position * n_step + time).to(data.device)
    return data.new_zeros(n_seq * n_step, data.shape[1]).index_copy(0, flat, data).view(n_seq, n_step, -1)


def _spans(steps: list[int], reverse: bool) -> list[tuple[slice, int]]:
    """(rows of the packed data, active sequences) of each time step, in the order the recurrence runs."""
    spans, start = [], 0
    for n in steps:
        spans.append((slice(start, start + n), n))
        start += n
    return spans[::-1] if reverse else spans


class GRURecurrence(torch.autograd.Function):
    """The recurrence of one GRU direction: input gates (N, 3H) of packed steps (``steps`` sequences each, longest
    first) -> hidden states (N, H). Reverse runs the last step first; each sequence starts from a zero state."""

    @staticmethod
    def forward(ctx, gates_in: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor, steps: list[int],
                reverse: bool) -> torch.Tensor:
        size = weight_hh.shape[1]
        out = gates_in.new_empty(gates_in.shape[0], size)
        gates = torch.empty_like(gates_in)       # r, z, n of every step
        hidden_n = torch.empty_like(out)         # h W_hnᵀ + b_hn, which r multiplies
        previous = torch.empty_like(out)         # the state each step starts from
        state = gates_in.new_zeros(steps[0], size)
        for rows, n in _spans(steps, reverse):
            h = state[:n]
            previous[rows] = h
            recurrent = torch.addmm(bias_hh, h, weight_hh.T)
            rz = torch.sigmoid(gates_in[rows, :2 * size] + recurrent[:, :2 * size], out=gates[rows, :2 * size])
            hidden_n[rows] = recurrent[:, 2 * size:]
            new = torch.tanh(torch.addcmul(gates_in[rows, 2 * size:], rz[:, :size], recurrent[:, 2 * size:]),
                             out=gates[rows, 2 * size:])
            torch.addcmul(new, rz[:, size:], h - new, out=out[rows])
            state[:n] = out[rows]
        ctx.steps, ctx.reverse = steps, reverse
        ctx.save_for_backward(weight_hh, gates, hidden_n, previous)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight_hh, gates, hidden_n, previous = ctx.saved_tensors
        size = weight_hh.shape[1]
        grad_in = torch.empty_like(gates)        # d(input gates)
        grad_hidden = torch.empty_like(gates)    # d(h W_hhᵀ + b_hh)
        carry = grad_out.new_zeros(ctx.steps[0], size)
        for rows, n in reversed(_spans(ctx.steps, ctx.reverse)):
            grad = grad_out[rows] + carry[:n]
            r, z, new = gates[rows, :size], gates[rows, size:2 * size], gates[rows, 2 * size:]
            h = previous[rows]
            grad_pre_n = torch.mul(grad * (1 - z), 1 - new * new, out=grad_in[rows, 2 * size:])
            torch.mul(grad_pre_n, r, out=grad_hidden[rows, 2 * size:])
            torch.mul(grad_pre_n * hidden_n[rows], r * (1 - r), out=grad_in[rows, :size])
            torch.mul(grad * (h - new), z * (1 - z), out=grad_in[rows, size:2 * size])
            grad_hidden[rows, :2 * size] = grad_in[rows, :2 * size]
            carry[:n] = torch.addmm(grad * z, grad_hidden[rows], weight_hh)
        grad_weight = grad_hidden.T @ previous
        return grad_in, grad_weight, grad_hidden.sum(0), None, None
