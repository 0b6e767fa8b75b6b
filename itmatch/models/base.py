"""The `Matcher` interface every model implements, and the encoding containers passed between its stages.

A matcher encodes images and texts independently, then scores every image against every text. Everything
downstream (the scoring engine, evaluation, training losses, search) talks only to this interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import torch
from torch import nn


@dataclasses.dataclass
class Encoding:
    """A batch of encoded items: every tensor field has the batch on dimension 0.

    Subclasses add fields; ``select``/``to`` work on all tensor fields, so the scoring engine can tile any
    model's encodings without knowing what they hold.
    """

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def __len__(self) -> int:
        return next(iter(self._tensors().values())).shape[0]

    def select(self, index: torch.Tensor | slice) -> Self:
        """The items at ``index`` (a slice or a 1-D index tensor) as a new encoding."""
        return dataclasses.replace(self, **{k: v[index] for k, v in self._tensors().items()})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """A copy on ``device``; floating-point fields also cast to ``dtype`` when given."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
        return dataclasses.replace(self, **{k: move(v) for k, v in self._tensors().items()})

    @classmethod
    def cat(cls, parts: list[Self]) -> Self:
        """Concatenate encodings of the same kind along the batch (text parts may differ in padded length)."""
        first = parts[0]
        out: dict[str, Any] = {}
        for name, value in first._tensors().items():
            tensors = [getattr(p, name) for p in parts]
            if value.dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
                width = max(t.shape[1] for t in tensors)
                tensors = [nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) for t in tensors]
            out[name] = torch.cat(tensors, 0)
        return dataclasses.replace(first, **out)


@dataclasses.dataclass
class TextEncoding(Encoding):
    """Encoded captions padded to a common length: ``words`` (B, L, d) is zero past each ``lengths`` (B,)."""

    words: torch.Tensor
    lengths: torch.Tensor

    def trimmed(self) -> Self:
        """The same captions with padding cut to the longest caption present (less work per pair)."""
        longest = int(self.lengths.max()) if len(self) else 0
        if longest == self.words.shape[1]:
            return self
        return dataclasses.replace(self, words=self.words[:, :longest])


class Matcher(nn.Module):
    """An image-text matching model.

    - ``encode_images(features (B, R, D), n_regions (B,) | None) -> Encoding`` — independent of any text;
    - ``encode_texts(tokens (B, L) int64, lengths (B,)) -> Encoding`` — independent of any image;
    - ``score(images, texts) -> Tensor (n_images, n_texts)`` — similarity of every pair.

    ``pair_bytes_per_word()`` tells the scoring engine how to tile: the working memory one (image, caption
    word) pair needs inside ``score`` (0 for embedding models scored by one matrix product). Subclasses set
    ``config`` (a dataclass whose fields rebuild the model); the registry sets ``model_name``.
    """

    model_name: str = ""
    config: Any = None

    def pair_bytes_per_word(self) -> int:
        """Bytes of working memory per (image, word) pair inside ``score``; 0 when scoring is one matmul."""
        return 0

    def encode_images(self, features: torch.Tensor, n_regions: torch.Tensor | None = None) -> Encoding:
        raise NotImplementedError

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoding:
        raise NotImplementedError

    def score(self, images: Encoding, texts: Encoding) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                n_regions: torch.Tensor | None = None) -> torch.Tensor:
        """Score matrix (B_images, B_texts) of a training batch: encode both sides, then score all pairs."""
        return self.score(self.encode_images(features, n_regions), self.encode_texts(tokens, lengths))

    def model_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model with ``create_model(model_name, **args)``."""
        return dataclasses.asdict(self.config)
