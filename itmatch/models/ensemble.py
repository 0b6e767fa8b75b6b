"""An ensemble of matchers scores a pair with the mean of its members' scores (SGRAF = SGR + SAF)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Self, Sequence

import numpy as np
import torch
from torch import nn

from itmatch.models.base import Encoding, Matcher


@dataclasses.dataclass
class EnsembleEncoding(Encoding):
    """One encoding per member, of the same items."""

    parts: list[Encoding]

    def __len__(self) -> int:
        return len(self.parts[0])

    def select(self, index: torch.Tensor | slice) -> Self:
        return EnsembleEncoding([p.select(index) for p in self.parts])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        return EnsembleEncoding([p.to(device, dtype) for p in self.parts])

    @classmethod
    def cat(cls, parts: list[Self]) -> Self:
        return EnsembleEncoding([type(group[0]).cat(list(group)) for group in zip(*(p.parts for p in parts))])


class Ensemble(Matcher):
    """Averages the score matrices of ``members`` (any matchers that take the same inputs)."""

    model_name = "ensemble"

    def __init__(self, members: list[Matcher]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def member_models(self) -> list[Matcher]:
        return list(self.members)

    def pair_bytes_per_word(self) -> int:
        return max(m.pair_bytes_per_word() for m in self.members)

    def prepared_images(self, images: EnsembleEncoding) -> EnsembleEncoding:
        return EnsembleEncoding([m.prepared_images(p) for m, p in zip(self.members, images.parts)])

    def model_args(self) -> dict:
        return {"members": [{"model_name": m.model_name, "model_args": m.model_args()} for m in self.members]}

    def encode_images(self, features: torch.Tensor, n_regions: torch.Tensor | None = None) -> EnsembleEncoding:
        return EnsembleEncoding([m.encode_images(features, n_regions) for m in self.members])

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> EnsembleEncoding:
        return EnsembleEncoding([m.encode_texts(tokens, lengths) for m in self.members])

    def score(self, images: EnsembleEncoding, texts: EnsembleEncoding) -> torch.Tensor:
        scores = [m.score(i, t) for m, i, t in zip(self.members, images.parts, texts.parts)]
        return torch.stack(scores).mean(0)


def member_mean(members: Iterable[Sequence[np.ndarray]], dtype: Any = np.float64) -> list[np.ndarray]:
    """An ensemble's scores where its members are scored one after another (each with its own tokens and tiles, or
    read from saved matrices): ``members`` yields each member's score arrays (blocks, or one per query), and the
    result is their element-wise mean as float32, summed in ``dtype``, one member at a time, so that only one set is
    held besides the sums. float64 (the default) rounds once, whatever the members' dtype (the authors save float64
    score matrices); the engine sums its own float32 matrices in float32, which for two members gives the
    authors' ``(sims1 + sims2) / 2`` bit for bit at half the memory. The first member's arrays become the sums when
    they are writable arrays of ``dtype``: pass fresh ones."""
    totals: list[np.ndarray] | None = None
    count = 0
    for parts in members:
        if totals is None:
            totals = [np.asarray(part, dtype=dtype) for part in parts]
            totals = [total if total.flags.writeable else total.copy() for total in totals]
        else:
            for total, part in zip(totals, parts, strict=True):
                total += part
        count += 1
    if totals is None:
        raise ValueError("an ensemble needs at least one member")
    if count > 1:
        for total in totals:
            total /= count
    return [total.astype(np.float32, copy=False) for total in totals]
