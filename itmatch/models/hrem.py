"""HREM (Fu et al., "Learning Semantic Relationship among Instances for Image-Text Matching", CVPR 2023).

An embedding model: at inference an image and a caption are encoded independently and scored by a dot product.

Fragment level (kept at inference): one transformer encoder layer per modality (post-norm, ReLU, feed-forward
width = ``embed_size``, key-padding mask) relates the regions of an image and the words of a caption; the
embedding is ``l2norm(w · topk_max(local) + (1 - w) · mean(transformer(local)))`` with ``w = fusion_weight``
(0.8) and k = 2, the local features being the region encoder's / text encoder's outputs.

Instance level (training only, after ``instance_warmup`` iterations): a graph over the batch's 2B embeddings
(B images then B captions).

- Connection ``A`` (no gradient): each row keeps its top ``connect_fraction`` of columns (ties kept). The
  cross-modal blocks rank by the mean word–region matching score. The same-modality blocks rank, by default
  (``same_modality_rank = "cross"``), as the release's ``lib/mca.py`` did from its first upload (2023-06-13)
  to 2023-10-25, most likely what the published models were trained with: the image–image block by ``v·tᵀ``
  and the text–text block by ``t·vᵀ``; ``"within"`` ranks them by ``v·vᵀ`` and ``t·tᵀ``, the paper's reading
  and the release since the authors' change of 2023-10-25 (commit fb854a9).
- Relevance ``S``: ``exp(-||x - y|| / sigma)`` within a modality; across modalities a small MLP over the top-K
  word–region matches plus their mean (one MLP per direction).
- Word–region matching (SCAN-style, on detached local features): ``s = LeakyReLU_0.1(ŵ · r̂)``. Caption→image:
  ``s`` is L2-normalised over the caption's words, each word keeps its best region; the mean over words is the
  connection score and the K largest are the MLP's input. Image→caption: ``s`` is L2-normalised over the
  image's regions, each region keeps its best word; mean and top-K over regions.
- Interaction: "fusion" = one transformer layer over all 2B nodes whose attention logits get ``λ · S`` and
  ``-inf`` where ``A`` is 0; "standalone" = an inter-modal layer (only cross-modal edges) then an intra-modal
  layer (only same-modal edges). The outputs, L2-normalised, are the enhanced embeddings ṽ, t̃.
- Loss: ``L(v, t) + L(ṽ, t̃) + [L(v, t̃) + L(ṽ, t)] + reg_weight · L_reg``; the bracket is the consistency
  term (``consistency_loss``); ``L_reg = KL(softmax(S_i2t) ‖ softmax(exp(-dist(v, t)/sigma)))`` per row, plus
  the same for t2i (the guide carries no gradient).

Ablation switches (the paper's ablation tables; the defaults are the full model): ``visual_relation`` /
``textual_relation`` off replace that modality's fragment-level transformer by the identity (the embedding is
``w · topk_max(local) + (1 - w) · mean(local)``); ``instance_intra`` / ``instance_inter`` off leave only the
other kind of instance-level edge (fusion: the attention is restricted to it; standalone: only that layer);
``connection`` off connects every pair (no ``A``); ``relevance`` off adds no ``λ · S`` to the attention (no
cross-modal MLPs and no ``L_reg``, which only shapes ``S``); ``consistency_loss`` and ``reg_weight`` as above.
Neighbour batch sampling is the trainer's ``data.neighbour_clusters``.

Where the released code and this one differ, and why, see docs/models.md (HREM section).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from itmatch.errors import ItmatchError
from itmatch.fields import check_ranges
from itmatch.models.layers import l2norm, length_mask
from itmatch.models import flops
from itmatch.models.pooling import mean_pool
from itmatch.models.registry import register_preset
from itmatch.models.vse import VSE, TrainBatch, VSEConfig

INTERACTIONS = ("fusion", "standalone", "off")
SAME_MODALITY_RANKS = ("cross", "within")


@dataclasses.dataclass
class HREMConfig(VSEConfig):
    """VSE options plus HREM's; names follow the authors' ``opt`` in comments where one exists."""

    #: Fields counted in training iterations, not epochs: a recipe run at a fraction of its epochs scales them too
    #: (``reproduce --epochs-scale``).
    iteration_fields: ClassVar[tuple[str, ...]] = ("instance_warmup",)
    pooling: str = "topk"
    pool_k: int = 2
    loss: str = "triplet"                    # base_loss / gnn_loss "trip"
    fusion_weight: float = 0.8               # residual_weight
    relation_heads: int = 16                 # nhead (fragment level)
    relation_dropout: float = 0.1            # dropout (fragment level)
    # instance level (training only)
    interaction: str = "fusion"              # fusion | standalone | off
    instance_warmup: int = 8000              # warmup: iterations before the instance level switches on
    instance_heads: int = 16
    instance_dropout: float = 0.1
    connect_fraction: float = 0.5            # threshold
    same_modality_rank: str = "cross"        # A's same-modality ranking: "cross" (v·tᵀ, t·vᵀ) | "within"
    relation_topk: int = 10                  # topk
    relevance_weight: float = 1.0            # mask_weight (λ): 1.0 Flickr30K, 1.5 MS-COCO
    sigma: float = 1.0
    reg_weight: float = 10.0                 # reg_loss_weight
    consistency_loss: bool = True            # cross_loss: L(v, t̃) + L(ṽ, t)
    # ablation switches (the paper's ablation tables)
    visual_relation: bool = True             # fragment-level relation of the regions (off: identity)
    textual_relation: bool = True            # fragment-level relation of the words (off: identity)
    instance_intra: bool = True              # instance-level edges within a modality
    instance_inter: bool = True              # instance-level edges across modalities
    connection: bool = True                  # connection matrix A (off: all pairs connected)
    relevance: bool = True                   # relevance matrix S in the attention (off: no λ·S, no L_reg)

    def encode_mflop(self, words: int) -> float:
        """Forward MFLOP of encoding one image and a caption of ``words`` tokens, the fragment-level relation
        layers included (feed-forward width = embedding size, as released)."""
        d = self.embed_size
        relations = (flops.transformer_layer(flops.REGIONS, d, d) if self.visual_relation else 0.0) + (
            flops.transformer_layer(words, d, d) if self.textual_relation else 0.0)
        return super().encode_mflop(words) + relations / 1e6

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("relation_heads", "instance_heads", "relation_topk", "sigma"),
                     fractions=("relation_dropout", "instance_dropout"),
                     non_negative=("fusion_weight", "instance_warmup", "relevance_weight", "reg_weight"),
                     choices={"interaction": INTERACTIONS, "same_modality_rank": SAME_MODALITY_RANKS})
        if self.interaction != "off" and not (self.instance_intra or self.instance_inter):
            raise ItmatchError("instance_intra and instance_inter are both off; for no instance level set "
                               "interaction = 'off'")
        if not 0 < self.connect_fraction <= 1:
            raise ItmatchError(f"connect_fraction must lie in (0, 1], got {self.connect_fraction}")
        if self.embed_size % self.relation_heads or self.embed_size % self.instance_heads:
            raise ItmatchError(f"embed_size {self.embed_size} must be divisible by the attention heads "
                               f"({self.relation_heads}, {self.instance_heads})")


def transformer_layer(dim: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    """The authors' layer: post-norm, ReLU, feed-forward width = ``dim``; batch first."""
    return nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True)


class FragmentRelation(nn.Module):
    """Fragment-level relation modelling of one modality: ``layer`` over the local features of each item.

    ``forward(local (B, N, d), lengths (B,)) -> (B, d)``: the mean of the layer's outputs at valid positions.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layer = transformer_layer(dim, heads, dropout)

    def forward(self, local: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        padding = ~length_mask(lengths, local.shape[1])
        return mean_pool(self.layer(local, src_key_padding_mask=padding), lengths)


class MatchStatistics(NamedTuple):
    """Word–region matching of every (caption, image) pair of a batch.

    ``t2i_mean`` (T, I), ``t2i_topk`` (T, I, K): per caption, over its words' best regions;
    ``i2t_mean`` (I, T), ``i2t_topk`` (I, T, K): per image, over its regions' best words.
    """

    t2i_mean: torch.Tensor
    t2i_topk: torch.Tensor
    i2t_mean: torch.Tensor
    i2t_topk: torch.Tensor


class Relations(NamedTuple):
    """The association graph over 2B nodes (images first): ``connect`` (2B, 2B) bool, ``relevance`` (2B, 2B),
    and the relevance regulariser ``reg_loss`` (scalar; None without a learned relevance)."""

    connect: torch.Tensor
    relevance: torch.Tensor
    reg_loss: torch.Tensor | None


def _topk_padded(values: torch.Tensor, valid: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The ``k`` largest ``values`` along ``dim`` among ``valid`` ones, descending; missing places are 0."""
    top = values.masked_fill(~valid, float("-inf")).topk(min(k, values.shape[dim]), dim=dim).values
    top = top.masked_fill(torch.isinf(top), 0.0)
    if top.shape[dim] < k:
        pad = list(top.shape)
        pad[dim] = k - top.shape[dim]
        top = torch.cat([top, top.new_zeros(pad)], dim)
    return top


def match_statistics(regions: torch.Tensor, n_regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor,
                     k: int, max_elements: int = 1 << 24) -> MatchStatistics:
    """Word–region matching of all caption × image pairs (see the module docstring), in caption chunks of at
    most ``max_elements`` word–region scores. regions (I, R, d), n_regions (I,), words (T, L, d), lengths (T,)."""
    region_ok = length_mask(n_regions, regions.shape[1])                  # (I, R)
    word_ok = length_mask(lengths, words.shape[1])                        # (T, L)
    regions = l2norm(regions) * region_ok.unsqueeze(2)
    words = l2norm(words) * word_ok.unsqueeze(2)
    n_img, n_reg, n_word = regions.shape[0], regions.shape[1], words.shape[1]
    step = max(1, max_elements // max(1, n_img * n_reg * n_word))
    parts = []
    for start in range(0, words.shape[0], step):
        w, ok_w = words[start:start + step], word_ok[start:start + step]
        sim = F.leaky_relu(torch.einsum("cld,ird->cilr", w, regions), 0.1)   # (C, I, L, R); padding gives 0
        ok_r = region_ok[None, :, None, :]
        ok_l = ok_w[:, None, :, None]
        best_region = (sim / (sim.norm(dim=2, keepdim=True) + 1e-8)).masked_fill(~ok_r, float("-inf")).amax(3)
        best_word = (sim / (sim.norm(dim=3, keepdim=True) + 1e-8)).masked_fill(~ok_l, float("-inf")).amax(2)
        valid_words = ok_w[:, None, :].expand_as(best_region)
        valid_regions = region_ok[None].expand_as(best_word)
        parts.append((
            best_region.masked_fill(~valid_words, 0.0).sum(2) / lengths[start:start + step, None],
            _topk_padded(best_region, valid_words, k, 2),
            best_word.masked_fill(~valid_regions, 0.0).sum(2) / n_regions[None, :],
            _topk_padded(best_word, valid_regions, k, 2),
        ))
    t2i_mean, t2i_topk, i2t_mean, i2t_topk = (torch.cat(p, 0) for p in zip(*parts))
    return MatchStatistics(t2i_mean, t2i_topk, i2t_mean.T, i2t_topk.transpose(0, 1))


def keep_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N, M) bool: each row keeps its ``int(M * fraction)`` (at least 1) largest entries, ties included."""
    k = max(1, int(scores.shape[1] * fraction))
    return scores >= scores.topk(k, dim=1).values[:, -1:]


def row_kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits) ‖ softmax(target_logits))`` per row, averaged over rows (the authors' ``kl_div``)."""
    return F.kl_div(F.log_softmax(target_logits, 1), F.log_softmax(logits, 1), reduction="batchmean",
                    log_target=True)


def same_modality_scores(v: torch.Tensor, t: torch.Tensor, rank: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, B) scores that rank the image–image and text–text blocks of ``A``: ``v·tᵀ`` and ``t·vᵀ``
    ("cross", the release as the published models were trained) or ``v·vᵀ`` and ``t·tᵀ`` ("within")."""
    if rank == "within":
        return v @ v.T, t @ t.T
    if len(v) != len(t):
        raise ItmatchError(f"same_modality_rank 'cross' needs as many captions as images in a batch, got "
                           f"{len(t)} and {len(v)}")
    cross = v @ t.T
    return cross, cross.T


class AssociationGraph(nn.Module):
    """Builds the connection and relevance matrices of a batch (``mlp_t2i``/``mlp_i2t``: K → K → 1).

    Without ``connection`` every pair is connected; without ``relevance`` the relevance is 0 (no MLPs, no
    regulariser). ``same_modality_rank`` says how the same-modality blocks of ``A`` are ranked (see
    ``same_modality_scores``)."""

    def __init__(self, topk: int, connect_fraction: float, sigma: float, connection: bool = True,
                 relevance: bool = True, same_modality_rank: str = "cross") -> None:
        super().__init__()
        self.topk, self.connect_fraction, self.sigma = topk, connect_fraction, sigma
        self.connection, self.relevance = connection, relevance
        self.same_modality_rank = same_modality_rank
        if relevance:
            self.mlp_t2i = nn.Sequential(nn.Linear(topk, topk), nn.ReLU(), nn.Linear(topk, 1))
            self.mlp_i2t = nn.Sequential(nn.Linear(topk, topk), nn.ReLU(), nn.Linear(topk, 1))

    def forward(self, batch: TrainBatch) -> Relations:
        v, t = batch.images, batch.texts
        n_nodes = len(v) + len(t)
        if not (self.connection or self.relevance):
            return Relations(torch.ones(n_nodes, n_nodes, dtype=torch.bool, device=v.device),
                             v.new_zeros(n_nodes, n_nodes), None)
        stats = match_statistics(batch.regions.detach(), batch.n_regions, batch.words.detach(), batch.lengths,
                                 self.topk)
        if self.connection:
            with torch.no_grad():
                top = self.connect_fraction
                images, texts = same_modality_scores(v, t, self.same_modality_rank)
                connect = torch.cat([torch.cat([keep_top(images, top), keep_top(stats.i2t_mean, top)], 1),
                                     torch.cat([keep_top(stats.t2i_mean, top), keep_top(texts, top)], 1)], 0)
        else:
            connect = torch.ones(n_nodes, n_nodes, dtype=torch.bool, device=v.device)
        if not self.relevance:
            return Relations(connect, v.new_zeros(n_nodes, n_nodes), None)
        i2t = self.mlp_i2t(stats.i2t_topk).squeeze(2) + stats.i2t_mean
        t2i = self.mlp_t2i(stats.t2i_topk).squeeze(2) + stats.t2i_mean
        relevance = torch.cat([
            torch.cat([torch.exp(-torch.cdist(v, v) / self.sigma), i2t], 1),
            torch.cat([t2i, torch.exp(-torch.cdist(t, t) / self.sigma)], 1),
        ], 0)
        guide = torch.exp(-torch.cdist(v, t) / self.sigma).detach()
        reg = row_kl(guide, i2t) + row_kl(guide.T, t2i)
        return Relations(connect, relevance, reg)


def attention_bias(relations: Relations, weight: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(2B, 2B) float added to the attention logits: ``weight · S`` where connected (and in ``keep``), else -inf."""
    allowed = relations.connect if keep is None else relations.connect & keep
    return (weight * relations.relevance).masked_fill(~allowed, float("-inf"))


class InstanceInteraction(nn.Module):
    """The relation interaction over the 2B nodes: "fusion" (``fusion`` layer) or "standalone" (``inter`` then
    ``intra`` layer). ``forward(nodes (2B, d), relations) -> (2B, d)`` L2-normalised. Without ``intra`` (or
    ``inter``) the fusion layer attends across (within) modalities only, and standalone lacks that layer."""

    def __init__(self, kind: str, dim: int, heads: int, dropout: float, weight: float, intra: bool = True,
                 inter: bool = True) -> None:
        super().__init__()
        self.kind, self.weight, self.use_intra, self.use_inter = kind, weight, intra, inter
        if kind == "fusion":
            self.fusion = transformer_layer(dim, heads, dropout)
            return
        if inter:
            self.inter = transformer_layer(dim, heads, dropout)
        if intra:
            self.intra = transformer_layer(dim, heads, dropout)

    def forward(self, nodes: torch.Tensor, relations: Relations) -> torch.Tensor:
        x = nodes.unsqueeze(0)
        half = nodes.shape[0] // 2
        modality = torch.arange(nodes.shape[0], device=nodes.device) >= half
        same = modality[:, None] == modality[None, :]
        if self.kind == "fusion":
            keep = None if self.use_intra and self.use_inter else (same if self.use_intra else ~same)
            x = self.fusion(x, src_mask=attention_bias(relations, self.weight, keep))
        else:
            if self.use_inter:
                x = self.inter(x, src_mask=attention_bias(relations, self.weight, ~same))
            if self.use_intra:
                x = self.intra(x, src_mask=attention_bias(relations, self.weight, same))
        return l2norm(x.squeeze(0))


class HREM(VSE):
    """HREM as a ``Matcher``: VSE's encoders, ``img_rel``/``txt_rel`` fragment relations, and (training only)
    ``graph`` (association graph) and ``interaction``."""

    def __init__(self, config: HREMConfig) -> None:
        super().__init__(config)
        d = config.embed_size
        heads, dropout = config.relation_heads, config.relation_dropout
        self.img_rel = FragmentRelation(d, heads, dropout) if config.visual_relation else None
        self.txt_rel = FragmentRelation(d, heads, dropout) if config.textual_relation else None
        if config.interaction != "off":
            self.graph = AssociationGraph(config.relation_topk, config.connect_fraction, config.sigma,
                                          config.connection, config.relevance, config.same_modality_rank)
            self.interaction = InstanceInteraction(config.interaction, d, config.instance_heads,
                                                   config.instance_dropout, config.relevance_weight,
                                                   config.instance_intra, config.instance_inter)

    def aggregate_images(self, regions: torch.Tensor, n_regions: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.img_pool(regions, n_regions), self.img_rel, regions, n_regions)

    def aggregate_texts(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.txt_pool(words, lengths), self.txt_rel, words, lengths)

    def _fuse(self, pooled: torch.Tensor, relation: FragmentRelation | None, local: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
        """``w · pooled + (1 - w) · mean(relation(local))``, the relation being the identity when switched off."""
        w = self.config.fusion_weight
        related = relation(local, lengths) if relation is not None else mean_pool(local, lengths)
        return w * pooled + (1 - w) * related

    def instance_active(self, step: int) -> bool:
        """Whether the instance level takes part at global iteration ``step`` (training mode, after warm-up)."""
        return self.training and self.config.interaction != "off" and step >= self.config.instance_warmup

    def enhance(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor, Relations]:
        """Relation-enhanced embeddings ṽ (B, d), t̃ (B, d) of a training batch, and the graph behind them."""
        relations = self.graph(batch)
        nodes = self.interaction(torch.cat([batch.images, batch.texts], 0), relations)
        return nodes[: len(batch.images)], nodes[len(batch.images):], relations

    def batch_loss(self, batch: TrainBatch, *, margin: float = 0.2, hardest_negative: bool = True,
                   same_image: torch.Tensor | None = None, step: int = 0, epoch: int = 0
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """VSE's objective on (v, t), plus the instance level's terms once ``instance_active(step)``."""
        def rank(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
            return self.ranking_loss(images, texts, margin=margin, hardest_negative=hardest_negative,
                                     same_image=same_image, epoch=epoch)

        loss = rank(batch.images, batch.texts)
        logs = {"base": float(loss.detach())}
        if self.instance_active(step):
            v2, t2, relations = self.enhance(batch)
            enhanced = rank(v2, t2)
            loss = loss + enhanced
            logs["enhanced"] = float(enhanced.detach())
            if relations.reg_loss is not None:
                loss = loss + self.config.reg_weight * relations.reg_loss
                logs["reg"] = float(relations.reg_loss.detach())
            if self.config.consistency_loss:
                cross = rank(batch.images, t2) + rank(v2, batch.texts)
                loss = loss + cross
                logs["consistency"] = float(cross.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs


register_preset("hrem", HREM, HREMConfig, "HREM: fragment-level relations at inference; instance-level association "
                "graph in training.")
