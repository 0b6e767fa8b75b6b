"""The `Matcher` interface every model implements, and the encoding containers passed between its stages.

A matcher encodes images and texts independently, then scores every image against every text. Everything
downstream (the scoring engine, evaluation, training losses, search) talks only to this interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Self

import torch
from torch import nn


#: Shown by ``Matcher.changed_args`` for an argument that one side does not have.
ABSENT = "(absent)"


def _field_defaults(config: Any) -> dict[str, Any]:
    """The default of every field of the dataclass ``config`` that has one, as ``model_args()`` writes it."""
    if not dataclasses.is_dataclass(config):
        return {}
    defaults = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


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
        """The items at ``index`` (a slice or a 1-D integer index tensor) as a new encoding. An index tensor goes
        through ``index_select``, whose backward pass adds repeated items' gradients in a fixed order (advanced
        indexing's accumulates them in an order that varies from run to run on several threads)."""
        if isinstance(index, slice):
            return dataclasses.replace(self, **{k: v[index] for k, v in self._tensors().items()})
        return dataclasses.replace(self, **{k: v.index_select(0, index.to(v.device))
                                            for k, v in self._tensors().items()})

    def split(self, sizes: list[int]) -> list[Self]:
        """The items cut into consecutive encodings of ``sizes`` items: with autograd the pieces' gradients meet
        in one backward pass, where a ``select`` per piece writes a batch-sized gradient for each."""
        pieces = {k: v.split(sizes) for k, v in self._tensors().items()}
        return [dataclasses.replace(self, **{k: parts[i] for k, parts in pieces.items()}) for i in range(len(sizes))]

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
    """An image-text matching model: the one interface evaluation, training, search and the service talk to.

    Required (every model implements them):

    - ``encode_images(features (B, R, D), n_regions (B,) | None) -> Encoding`` — independent of any text;
    - ``encode_texts(tokens (B, L) int64, lengths (B,)) -> Encoding`` — independent of any image;
    - ``score(images, texts) -> Tensor (n_images, n_texts)`` — similarity of every pair.

    Optional hooks, declared here with defaults that suit a plain cross-attention model trained on its score
    matrix; a model overrides only what differs (no caller probes with ``hasattr``):

    - ``is_embedding``: encodings are one L2-normalised vector ``emb`` per item, scored by their dot product
      (VSE, HREM): such a model can shortlist from a vector index and write embeddings;
    - ``pair_bytes_per_word()``: how the scoring engine tiles (0 when scoring is one matrix product);
    - ``prepared_images(images)``: per-image work done once before the engine tiles (e.g. Gram matrices);
    - ``vocab_size`` / ``tokenize``: how captions become token ids (a vocabulary of that size, or the model's
      own tokenizer);
    - ``init_word_embeddings(vocab)``: called once before the first training step (e.g. GloVe vectors);
    - ``parameter_groups(lr)``: optimizer groups (e.g. a pretrained text encoder at a smaller rate);
    - ``head_scores(images, texts)``: the score heads trained with one loss each (one head: ``score``);
    - ``independent_pair_scores``: one head, and no pair's training score depends on another pair's (lets the
      trainer back-propagate through only the scores the loss reads);
    - ``has_own_objective`` with ``encode_train_batch``/``batch_loss``: a training loss of the model's own
      (otherwise the ranking loss of the batch's score matrix);
    - ``set_caption_stats_gather(gather)``: data-parallel training hands in a collective for per-caption
      statistics (SAF's BatchNorm);
    - ``can_explain`` with ``explain(image, text)``: what one pair's score looks at;
    - ``member_models()``: the models averaged into this one's score (an ensemble's members; else itself).

    Subclasses set ``config`` (a dataclass whose fields rebuild the model); the registry sets ``model_name``.
    """

    model_name: str = ""
    #: Whether encodings are single vectors ``emb`` (N, d), L2-normalised, and ``score`` their dot product (a class
    #: attribute, so that the registry can name the embedding models without building one).
    is_embedding: ClassVar[bool] = False
    config: Any = None

    # -- required ------------------------------------------------------------------------------------------
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

    def changed_args(self, stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{name: (stored value, this model's value)} for each argument where ``stored``, the ``model_args()`` of a
        saved run, differs from this model's. A config field that ``stored`` lacks was added after the run was
        saved and counts as its default (the default keeps the behaviour the run had): only a real change of a
        value is reported."""
        filled = {**_field_defaults(self.config), **stored}
        now = self.model_args()
        return {name: (filled.get(name, ABSENT), now.get(name, ABSENT)) for name in sorted(filled.keys() | now.keys())
                if filled.get(name, ABSENT) != now.get(name, ABSENT)}

    # -- scoring ---------------------------------------------------------------------------------------------

    @property
    def display_name(self) -> str:
        """The model's registered name, or its class's for a model built without the registry (for messages)."""
        return self.model_name or type(self).__name__

    def member_models(self) -> list[Matcher]:
        """The models whose mean score is this model's: itself, or an ensemble's members (scored one by one)."""
        return [self]

    def pair_bytes_per_word(self) -> int:
        """Bytes of working memory per (image, word) pair inside ``score``; 0 when scoring is one matmul."""
        return 0

    def prepared_images(self, images: Encoding) -> Encoding:
        """``images`` with the per-image quantities that ``score`` would otherwise recompute for every tile of
        captions computed once (the scoring engine calls it before tiling); by default unchanged."""
        return images

    # -- captions --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int | None:
        """Words in the table the model reads word ids into (its vocabulary must have exactly that many), or
        None when it reads no vocabulary's ids (its own ``tokenize``)."""
        return None

    @property
    def tokenize(self) -> Callable[[list[str]], list[list[int]]] | None:
        """captions -> token ids with the model's own tokenizer; None when captions are read with a vocabulary."""
        return None

    # -- training --------------------------------------------------------------------------------------------
    def init_word_embeddings(self, vocab: Any) -> int:
        """Initialise word vectors for the words of ``vocab`` before the first step (not when resuming);
        returns how many were set (0: nothing to do)."""
        return 0

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups; each group's ``lr_factor`` scales the scheduled rate. Default: one group, 1×."""
        return [{"params": list(self.parameters()), "lr": lr, "lr_factor": 1.0}]

    def head_scores(self, images: Encoding, texts: Encoding) -> torch.Tensor:
        """Score matrices (H, I, C) of the heads trained with one ranking loss each; one head: ``score``."""
        return self.score(images, texts)[None]

    @property
    def independent_pair_scores(self) -> bool:
        """Whether, in training, each pair's score depends on its own image's and caption's encodings alone (no
        statistics over pairs) and there is one head: the trainer may then record the pair work of only the
        scores a hardest-negative loss reads (``itmatch.train.active_pairs``)."""
        return False

    @property
    def has_own_objective(self) -> bool:
        """Whether training uses ``encode_train_batch`` + ``batch_loss`` instead of the score-matrix loss."""
        return False

    def encode_train_batch(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                           n_regions: torch.Tensor | None = None) -> Any:
        """Encode a training batch (pair i = image i, caption i) into a dataclass or NamedTuple of tensors with
        the batch on dim 0 (data-parallel runs gather it); only with ``has_own_objective``."""
        raise NotImplementedError(f"{type(self).__name__} has no objective of its own")

    def batch_loss(self, batch: Any, *, margin: float = 0.2, hardest_negative: bool = True,
                   same_image: torch.Tensor | None = None, step: int = 0, epoch: int = 0
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, {name: value}) of an encoded (gathered) batch; only with ``has_own_objective``."""
        raise NotImplementedError(f"{type(self).__name__} has no objective of its own")

    def set_caption_stats_gather(self, gather: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Data-parallel training: ``gather`` maps this process's per-caption statistics (C_local, k) to the
        global batch's (C, k); a model without per-caption statistics ignores it."""

    # -- explanations ----------------------------------------------------------------------------------------
    @property
    def can_explain(self) -> bool:
        """Whether ``explain`` is implemented (cross-attention models)."""
        return False

    def explain(self, image: Encoding, text: Encoding) -> dict[str, torch.Tensor | None]:
        """What one pair's score looks at: ``attention`` (L, R), ``gates`` (L,) or None, ``global_gate``,
        ``score``; only with ``can_explain``."""
        raise NotImplementedError(f"{type(self).__name__} cannot explain its scores")
