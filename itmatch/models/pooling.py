"""Pooling of a variable number of local features (regions or words) into one vector per item.

Every pool takes ``features`` (B, N, d) and ``lengths`` (B,) and reads only the first ``lengths[b]`` rows of
item ``b``: what lies in the padding never changes the result, so an item pools the same alone or in a batch.

- ``mean``: the average of the valid rows;
- ``max``: the per-dimension maximum;
- ``topk``: the per-dimension mean of the ``k`` largest values (``min(k, n)`` when an item has fewer rows) —
  HREM pools its local features with ``k = 2``;
- ``gpo``: VSE∞'s Generalised Pooling Operator: each dimension's values are sorted in descending order and
  summed with weights that depend only on the item's length: a sine/cosine position code per rank, a
  Bi-GRU over those codes, a linear score per rank and a softmax over ranks at temperature 0.1.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmatch.errors import ItmatchError
from itmatch.models.layers import cached_weights, length_mask
from itmatch.models.softmax import softmax

POOLINGS = ("mean", "max", "topk", "gpo")


def mean_pool(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, N, d), (B,) -> (B, d): the mean of each item's valid rows."""
    mask = length_mask(lengths, features.shape[1]).unsqueeze(2)
    total = features.masked_fill(~mask, 0.0).sum(1)
    return total / lengths.clamp_min(1).unsqueeze(1).to(features.dtype)


def topk_max_pool(features: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, d), (B,) -> (B, d): per dimension, the mean of the ``min(k, lengths[b])`` largest valid values."""
    k = min(k, features.shape[1])
    mask = length_mask(lengths, features.shape[1]).unsqueeze(2)
    top = features.masked_fill(~mask, float("-inf")).topk(k, dim=1).values           # (B, k, d)
    used = length_mask(lengths.clamp(max=k), k).unsqueeze(2)                            # (B, k, 1)
    return top.masked_fill(~used, 0.0).sum(1) / lengths.clamp(1, k).unsqueeze(1).to(features.dtype)


def positional_code(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) sine/cosine code of positions 0..length-1 (sines in even, cosines in odd columns)."""
    if dim % 2:
        raise ValueError(f"the position code needs an even dimension, got {dim}")
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    code = torch.zeros(length, dim, device=device)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency)
    return code


@dataclasses.dataclass
class _LengthTable:
    """GPO's weights by length, ``padded`` (n + 1, n): row ``m`` holds the weights of length ``m`` (zero-padded).
    A filled table is never written to again: a longer one replaces it, so a thread reading the old one while
    another grows it reads whole rows (the service searches on several threads with one model)."""

    padded: torch.Tensor | None = None


class GPO(nn.Module):
    """VSE∞'s Generalised Pooling Operator (state-dict names ``gru``, ``linear`` as released).

    ``d_code``: size of the position code fed to the Bi-GRU; ``d_hidden``: its hidden size.
    """

    def __init__(self, d_code: int = 32, d_hidden: int = 32) -> None:
        super().__init__()
        self.d_code = d_code
        self.gru = nn.GRU(d_code, d_hidden, 1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(B, width) pooling weight of each rank: a softmax over ranks ``< lengths[b]``, zero past them.

        Without autograd the weights of every length up to the longest seen are kept in a table (they depend on
        the length alone), so encoding a query does not run the Bi-GRU again. Each length's row is computed on
        its own, so the table's numbers do not depend on which batches came first; ``cached_weights`` starts a
        new table when a parameter changes (an optimiser step or a load bumps its version)."""
        if torch.is_grad_enabled() or not len(lengths) or int(lengths.min()) < 1:
            return self._weights(lengths, width)
        table = cached_weights(self, _LengthTable)
        padded = table.padded  # read once: another thread may replace it meanwhile
        longest = max(int(lengths.max()), width)
        if padded is None or padded.shape[1] < longest:
            known = 0 if padded is None else padded.shape[1]
            grown = self.linear.weight.new_zeros(longest + 1, longest)
            if padded is not None:
                grown[:known + 1, :known] = padded
            for n in range(known + 1, longest + 1):
                grown[n, :n] = self._weights(torch.tensor([n], device=lengths.device), n)[0]
            table.padded = padded = grown
        return padded[lengths, :width]

    def _weights(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """``weights`` computed: the Bi-GRU over the position codes of each length."""
        code = positional_code(width, self.d_code, lengths.device).expand(len(lengths), width, self.d_code)
        packed = pack_padded_sequence(code, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=width)
        half = out.shape[2] // 2
        scores = self.linear((out[:, :, :half] + out[:, :, half:]) / 2).squeeze(2)
        scores = scores.masked_fill(~length_mask(lengths, width), float("-inf"))
        return softmax(scores / 0.1, dim=1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N, d), (B,) -> (B, d)."""
        width = int(lengths.max())
        features = features[:, :width]
        mask = length_mask(lengths, width).unsqueeze(2)
        ranked = features.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
        ranked = ranked.masked_fill(~mask, 0.0)
        return (ranked * self.weights(lengths, width).unsqueeze(2).to(ranked.dtype)).sum(1)


class Pool(nn.Module):
    """One of ``POOLINGS`` as a module: ``Pool("topk", k=2)(features, lengths) -> (B, d)``."""

    def __init__(self, kind: str, k: int = 2) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ItmatchError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}")
        if kind == "topk" and k < 1:
            raise ItmatchError(f"top-k pooling needs k >= 1, got {k}")
        self.kind, self.k = kind, k
        self.gpo = GPO() if kind == "gpo" else None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.gpo is not None:
            return self.gpo(features, lengths)
        if self.kind == "mean":
            return mean_pool(features, lengths)
        return topk_max_pool(features, lengths, 1 if self.kind == "max" else self.k)

    def extra_repr(self) -> str:
        return f"{self.kind}" + (f", k={self.k}" if self.kind == "topk" else "")
