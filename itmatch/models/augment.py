"""The authors' training-time augmentations of the embedding models (VSE, HREM): masking, replacing and deleting
words of a caption, and dropping regions of an image."""

from __future__ import annotations

import torch

from itmatch.models.layers import length_mask


def augment_tokens(tokens: torch.Tensor, lengths: torch.Tensor, *, vocab_size: int, mask_id: int,
                   continuation: torch.Tensor | None = None, prob: float = 0.2
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' training-time caption augmentation, on a padded batch of ids.

    Each word between the first and last token (``[CLS]``/``[SEP]`` or ``<start>``/``<end>``) is, with
    probability ``prob``, masked (half the cases: all its pieces become ``mask_id``), replaced (a tenth: each
    piece a random id below ``vocab_size``) or deleted (the rest). A word is a piece plus the continuation
    pieces after it (``continuation[id]`` true, e.g. BERT's ``##`` pieces); without ``continuation`` every
    token is a word. Returns the new ``(tokens (B, L'), lengths (B,))``, still zero-padded.
    """
    batch, width = tokens.shape
    lengths = lengths.to(tokens.device)
    position = torch.arange(width, device=tokens.device).expand(batch, width)
    inner = (position >= 1) & (position < (lengths - 1).unsqueeze(1))
    starts = inner if continuation is None else inner & ~continuation[tokens.clamp(0, len(continuation) - 1)]
    # every piece takes the draw of the word start before it
    start_of = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    draw = torch.rand(batch, width, device=tokens.device).gather(1, start_of)
    draw = torch.where(inner, draw, torch.ones_like(draw))
    masked = draw < prob * 0.5
    replaced = (draw >= prob * 0.5) & (draw < prob * 0.6)
    deleted = (draw >= prob * 0.6) & (draw < prob)
    out = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    out = torch.where(replaced, torch.randint_like(tokens, vocab_size), out)
    keep = length_mask(lengths, width) & ~deleted
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    new_lengths = keep.sum(1)
    out = out.gather(1, order)[:, : int(new_lengths.max())]
    return out.masked_fill(~length_mask(new_lengths, out.shape[1]), 0), new_lengths


def drop_regions(features: torch.Tensor, n_regions: torch.Tensor, prob: float = 0.2
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' region dropping: each valid region is removed with probability ``prob`` (at least one is
    kept per image); the rest move to the front. (B, R, D), (B,) -> (B, R', D) zero-padded, (B,)."""
    batch, width, _ = features.shape
    valid = length_mask(n_regions.to(features.device), width)
    keep = valid & (torch.rand(batch, width, device=features.device) >= prob)
    first = valid.long().argmax(1)
    keep[torch.arange(batch, device=features.device), first] |= ~keep.any(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    counts = keep.sum(1)
    out = features.gather(1, order.unsqueeze(2).expand_as(features))[:, : int(counts.max())]
    return out.masked_fill(~length_mask(counts, out.shape[1]).unsqueeze(2), 0.0), counts
