"""The loss of one global training batch, for any ``Matcher``, in one process or as one of W (under DDP).

By default a model is trained as the SGRAF authors train SGR/SAF: the (B, B) score matrix of the batch
(``model(features, tokens, lengths)``, image i with caption i) under ``itmatch.losses.ranking_loss``. A model with
an objective of its own provides two methods, split so that data-parallel runs can gather between them:
``encode_train_batch(features, tokens, lengths) -> batch`` (a NamedTuple or dataclass of tensors, batch on dim 0)
and ``batch_loss(batch, *, margin, hardest_negative, same_image, step, epoch) -> (loss, {name: value})``
(VSE and HREM do).

With a process ``group`` each process passes its slice of the batch and gets the loss of the whole batch (see
``itmatch.train.distributed``): a score-matrix model gathers all image encodings, scores them against its own
captions and gathers the columns, so only B × B/W pairs are scored per process; an own-objective model has its
encoded batch gathered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from itmatch.losses import ranking_loss
from itmatch.models.base import Matcher
from itmatch.train.config import LossSection
from itmatch.train.distributed import gather_fields, gather_rows


def has_own_objective(model: Matcher) -> bool:
    """Whether ``model`` defines its training loss (``encode_train_batch`` + ``batch_loss``)."""
    return hasattr(model, "encode_train_batch") and hasattr(model, "batch_loss")


class TrainingObjective(nn.Module):
    """``forward(features, tokens, lengths, images, step, epoch) -> (loss, {name: value})`` of the global batch.

    ``features`` (b, R, D), ``tokens`` (b, L), ``lengths`` (b,) are this process's pairs; ``images`` (B,) the image
    index of every pair of the global batch (for ``loss.mask_same_image``).
    """

    def __init__(self, model: Matcher, loss: LossSection, group: Any = None) -> None:
        super().__init__()
        self.model, self.loss, self.group = model, loss, group

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor,
                step: int, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        same_image = (images[:, None] == images[None, :]) if self.loss.mask_same_image else None
        options = dict(margin=self.loss.margin, hardest_negative=self.loss.hardest_negative, same_image=same_image)
        if has_own_objective(self.model):
            batch = self.model.encode_train_batch(features, tokens, lengths)
            if self.group is not None:
                batch = gather_fields(batch, self.group)
            return self.model.batch_loss(batch, step=step, epoch=epoch, **options)
        loss = ranking_loss(self.scores(features, tokens, lengths).float(), **options)
        return loss, {"loss": float(loss.detach())}

    def scores(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The (B, B) score matrix of the global batch (images × captions, pairs on the diagonal)."""
        if self.group is None:
            return self.model(features, tokens, lengths)
        images = gather_fields(self.model.encode_images(features), self.group)
        columns = self.model.score(images, self.model.encode_texts(tokens, lengths))
        return gather_rows(columns.T, self.group).T
