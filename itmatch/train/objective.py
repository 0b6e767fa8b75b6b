"""The loss of one global training batch, for any ``Matcher``, in one process or as one of W (under DDP).

By default a model is trained as the SGRAF authors train SGR/SAF: the (B, B) score matrix of the batch
(``model(features, tokens, lengths)``, image i with caption i) under ``itmatch.losses.ranking_loss``. A model with
an objective of its own (``has_own_objective``) provides two methods, split so that data-parallel runs can gather
between them:
``encode_train_batch(features, tokens, lengths) -> batch`` (a NamedTuple or dataclass of tensors, batch on dim 0)
and ``batch_loss(batch, *, margin, hardest_negative, same_image, step, epoch) -> (loss, {name: value})``
(VSE and HREM do). Every other model is trained on the sum of its heads' losses (``head_scores(images, texts) ->
(H, I, C)``: one head by default, two for SGR and SAF trained jointly over shared parts). On a CPU, under the
hardest negative, a model with ``independent_pair_scores`` (SGR, TSHSR) records only the scores its loss reads
(``itmatch.train.active_pairs``); the others record the whole matrix, a few captions at a time
(``score_in_chunks``).

With a process ``group`` each process passes its slice of the batch and gets the loss of the whole batch (see
``itmatch.train.distributed``): a score-matrix model gathers all image encodings, scores them against its own
captions and gathers the columns, so only B × B/W pairs are scored per process; an own-objective model has its
encoded batch gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from itmatch.losses import ranking_loss
from itmatch.models.base import Encoding, Matcher
from itmatch.train.active_pairs import active_pair_scores
from itmatch.train.config import LossSection
from itmatch.train.distributed import gather_fields, gather_rows

#: Captions scored at once in a single-process CPU training step (the fastest of 4, 8, 16 and the whole batch
#: with the blocked similarity vectors).
CPU_CAPTION_CHUNK = 8


class TrainingObjective(nn.Module):
    """``forward(features, tokens, lengths, images, step, epoch) -> (loss, {name: value})`` of the global batch.

    ``features`` (b, R, D), ``tokens`` (b, L), ``lengths`` (b,) are this process's pairs; ``images`` (B,) the image
    index of every pair of the global batch (for ``loss.mask_same_image``). ``recompute`` trades time for memory
    on a CPU: see ``score_in_chunks``.
    """

    def __init__(self, model: Matcher, loss: LossSection, group: Any = None, recompute: bool = False) -> None:
        super().__init__()
        self.model, self.loss, self.group, self.recompute = model, loss, group, recompute

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor,
                step: int, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        same_image = (images[:, None] == images[None, :]) if self.loss.mask_same_image else None
        options = {"margin": self.loss.margin, "hardest_negative": self.loss.hardest_negative,
                   "same_image": same_image}
        if self.model.has_own_objective:
            batch = self.model.encode_train_batch(features, tokens, lengths)
            if self.group is not None:
                batch = gather_fields(batch, self.group)
            return self.model.batch_loss(batch, step=step, epoch=epoch, **options)

        def loss_of(heads: torch.Tensor) -> torch.Tensor:
            heads = heads.float()
            loss = ranking_loss(heads[0], **options)
            for head in heads[1:]:
                loss = loss + ranking_loss(head, **options)
            return loss

        loss = loss_of(self.scores(features, tokens, lengths, loss_of))
        return loss, {"loss": float(loss.detach())}

    def scores(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
               loss_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The (H, B, B) score matrices of the model's heads (``head_scores``; H = 1 for most models) on the
        global batch (images × captions, pairs on the diagonal).

        Given the loss (``loss_of``: matrices -> scalar), a CPU step of a model with independent pair scores under
        the hardest-negative loss records the pair work only for the scores the loss reads
        (``active_pair_scores``): the same loss and gradients, about 2.2× (SGR) and 2.5× (TSHSR) faster at batch
        128."""
        images, texts = self.model.encode_images(features), self.model.encode_texts(tokens, lengths)
        score = self.model.head_scores
        sparse = (loss_of is not None and self.loss.hardest_negative and self.model.independent_pair_scores
                  and next(self.model.parameters()).device.type == "cpu")
        if self.group is None:
            if sparse:
                return active_pair_scores(self.model, images, texts, loss_of)
            return score_in_chunks(self.model, images, texts, recompute=self.recompute, score=score)

        def gather(columns: torch.Tensor) -> torch.Tensor:
            return gather_rows(columns.movedim(-1, 0), self.group).movedim(0, -1)

        images = gather_fields(images, self.group)
        if sparse:
            return gather(active_pair_scores(self.model, images, texts, loss_of, gather))
        # one score call per process and step: SAF gathers its per-caption statistics once, in caption order
        return gather(score(images, texts))


def score_in_chunks(model: Matcher, images: Encoding, texts: Encoding, recompute: bool = False,
                    score: Callable[[Encoding, Encoding], torch.Tensor] | None = None) -> torch.Tensor:
    """``model.score(images, texts)`` (or ``score``, e.g. ``model.head_scores``; captions on the last dimension)
    with gradient, a few captions at a time on a CPU.

    The same numbers as one call (per-caption work is independent; SAF's running statistics advance caption by
    caption either way), computed faster: a cross-attention model's pair tensors (images × captions × words ×
    1024) are memory-bound, and on a CPU chunks of ``CPU_CAPTION_CHUNK`` captions keep them near the caches and,
    captions being sorted by length, trim each chunk's padding. At batch 128 a whole SAF step took 44.5 s against
    23.6 s in chunks of 8; with the blocked similarity vectors (``ProjectedSquares``) chunks of 8 beat 4 (SAF at
    batch 128: 13.6 vs 14.2 s of CPU), 16 and 64 (SGR at batch 64). A GPU takes the whole batch.

    With ``recompute`` a chunk keeps only its scores for the backward pass and runs its forward again there
    (activation checkpointing, with the same dropout draws): the pair activations of one chunk live at a time
    instead of the whole batch's, for about one more forward pass of the pair work. The results are identical.
    """
    score = score or model.score
    device = next(iter(model.parameters())).device
    if device.type != "cpu" or not model.pair_bytes_per_word() or len(texts) <= CPU_CAPTION_CHUNK:
        return score(images, texts)
    chunks = [texts.select(slice(start, start + CPU_CAPTION_CHUNK))
              for start in range(0, len(texts), CPU_CAPTION_CHUNK)]
    images = model.prepared_images(images)  # per-image work (Gram matrices) once for all chunks, not in a checkpoint
    if not recompute:
        return torch.cat([score(images, chunk) for chunk in chunks], -1)
    recomputing = lambda: (contextlib.nullcontext(), scratch_buffers(model))  # noqa: E731
    return torch.cat([checkpoint(score, images, chunk, use_reentrant=False, context_fn=recomputing)
                      for chunk in chunks], -1)


@contextlib.contextmanager
def scratch_buffers(module: nn.Module) -> Iterator[None]:
    """Give the block copies of ``module``'s buffers and put the originals back afterwards: a recomputed forward
    must not advance BatchNorm statistics a second time, nor change a buffer that another chunk's recomputed
    BatchNorm saved for its backward."""
    originals = [(owner, name, buffer) for owner in module.modules()
                 for name, buffer in owner.named_buffers(recurse=False)]
    for owner, name, buffer in originals:
        setattr(owner, name, buffer.clone())
    try:
        yield
    finally:
        for owner, name, buffer in originals:
            setattr(owner, name, buffer)
