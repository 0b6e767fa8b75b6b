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

Ablation switches (the paper's Tables 3-5; the defaults are the published models and keep their computation
unchanged): ``sgr_step = 0`` is SGR without graph reasoning, ``sigmoid(w_eval . s_global)`` (the local nodes are
then not computed: they could not reach the score); ``global_node = False`` leaves the local nodes only, and SGR
then reads the mean of its valid nodes after reasoning instead of node 0; ``attention = "i2t"`` makes the local
nodes per region (each region attends over the caption's words: ``l2norm(W (attended words - region)^2)``, R
nodes) instead of per word; ``module = "AVE"`` averages ``sigmoid(w_eval . s)`` over the nodes (average
aggregation), and with ``similarity = "scalar"`` averages the cosine similarities of the aligned pairs instead
(SCAN's average, no parameters); ``module = "SGR+SAF"`` trains both heads over one shared set of similarity
nodes (joint training, the summed loss: ``head_scores``) and scores with the mean of the two.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.fields import check_ranges
from itmatch.models.attention import (TextSelfAttention, VisualSelfAttention, attended_regions, cross_attention,
                                      similarity_vectors)
from itmatch.models import flops
from itmatch.models.layers import (batchnorm_eval, cached_weights, in_pair_chunks, l1norm, l2norm, length_mask,
                                   pair_chunks, xavier_init_)
from itmatch.models.region_word import (PAIR_SPREAD_WORDS, RegionEncoding, RegionWordConfig, RegionWordMatcher,
                                        WordEncoding, global_similarity, word_pair_bytes)
from itmatch.models.registry import register_preset
from itmatch.models.softmax import softmax, softmax_backward

MODULES = ("SGR", "SAF", "AVE", "SGR+SAF")
ATTENTIONS = ("t2i", "i2t")
SIMILARITIES = ("vector", "scalar")


@dataclasses.dataclass
class SGRAFConfig(RegionWordConfig):
    """Hyper-parameters of SGR/SAF: the shared encoder fields (``RegionWordConfig``) plus the heads and switches."""

    module: str = "SGR"            # "SGR", "SAF", "AVE" (average aggregation) or "SGR+SAF" (joint training)
    sgr_step: int = 3
    # ablation switches (SGRAF Tables 3-5); sgr_step = 0 is "no graph reasoning"
    global_node: bool = True       # the global alignment is a node; off: local nodes only (mean read-out for SGR)
    attention: str = "t2i"         # "t2i": words attend to regions (a node per word); "i2t": a node per region
    similarity: str = "vector"     # "vector" similarity representations; "scalar" cosines (module "AVE" only)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, non_negative=("sgr_step",),  # 0: no graph reasoning
                     choices={"module": MODULES, "attention": ATTENTIONS, "similarity": SIMILARITIES})
        if self.similarity == "scalar" and self.module != "AVE":
            raise ItmatchError("similarity 'scalar' (cosines) can only be averaged: use module 'AVE' (model 'ave')")

    @property
    def heads(self) -> tuple[str, ...]:
        """The aggregation heads over the similarity nodes: one, or SGR and SAF when trained jointly."""
        return tuple(self.module.split("+"))

    @property
    def global_vectors(self) -> bool:  # type: ignore[override]
        return self.global_node

    def pair_mflop(self, words: int) -> float:
        """Forward MFLOP of one pair's work for a caption of ``words`` tokens (``itmatch.models.flops``)."""
        d, k = self.embed_size, self.sim_dim
        # t2i: each word attends over the regions; i2t: each region over the words
        local, context = (words, self.num_regions) if self.attention == "t2i" else (self.num_regions, words)
        nodes = local + int(self.global_node)
        if self.similarity == "scalar":  # AVE of cosines (element-wise) of the aligned pairs
            return flops.cross_attention(local, context, d) / 1e6
        total = flops.linear(1, d, k) if self.global_node else 0.0
        if not self.uses_local:
            return (total + flops.linear(1, k, 1)) / 1e6
        total += flops.cross_attention(local, context, d) + flops.linear(local, d, k)
        if self.module == "AVE":
            return (total + flops.linear(nodes, k, 1)) / 1e6
        total += flops.linear(len(self.heads), k, 1)  # the read-outs
        if "SAF" in self.heads:
            total += flops.linear(nodes, k, 1) + 2.0 * nodes * k  # the gates and the gated sum
        if "SGR" in self.heads and self.sgr_step:
            full = self.sgr_step - 1 if self.global_node else self.sgr_step  # the last step's node 0 alone
            total += full * flops.graph_step(nodes, k) + (flops.readout_step(nodes, k) if self.global_node else 0.0)
        return total / 1e6

    @property
    def uses_local(self) -> bool:
        """Whether the local nodes can reach the score (not for SGR without reasoning over a global node)."""
        return not (self.heads == ("SGR",) and self.sgr_step == 0 and self.global_node)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last dimension, with broadcasting (SCAN's ``cosine_similarity``)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values (P, N, k) averaged over the nodes where mask (P, N) is true -> (P, k)."""
    weights = mask.to(values.dtype)
    return (values * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True)


class GraphReasoning(nn.Module):
    """One SGR step over similarity nodes (the released ``GraphReasoning``; names kept for its state dict)."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.graph_query_w = nn.Linear(sim_dim, sim_dim)
        self.graph_key_w = nn.Linear(sim_dim, sim_dim)
        self.sim_graph_w = nn.Linear(sim_dim, sim_dim)
        xavier_init_(self)
        # The key bias adds a term constant along each softmax row: it cannot change a score, gets no gradient,
        # and is kept (frozen) only so that the released state dicts load.
        self.graph_key_w.bias.requires_grad_(False)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M, u, [M, Wgᵀ], [u, bg])``: the folded query-key matrix and bias, and both beside the value
        projection's, so that one product gives every node's query (bias included) and value."""
        fold = self.graph_query_w.weight.T @ self.graph_key_w.weight
        bias = self.graph_query_w.bias @ self.graph_key_w.weight
        return (fold, bias, torch.cat([fold, self.sim_graph_w.weight.T], 1),
                torch.cat([bias, self.sim_graph_w.bias]))

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """nodes (P, N, k), node_mask (P, N) bool -> updated nodes (P, N, k), or node 0 (P, k) if ``first_only``.

        Logits ``(Wq s_i + bq)·(Wk s_j + bk)`` equal ``(s_i M + u)·s_j`` plus terms constant in j, with
        ``M = Wq^T Wk`` and ``u = Wk^T bq``; those constants cancel in the row softmax. The pairs go through in
        cache-sized chunks: ``in_pair_chunks`` without autograd, ``GraphStep`` (both passes) with it.
        """
        blocked = ~node_mask[:, None, :]
        if first_only:
            return self.sim_graph_w(self.first_context(nodes, blocked)).relu_()
        if not torch.is_grad_enabled():
            return in_pair_chunks(self.step, nodes, blocked)
        # training: the same step with a hand-written backward pass
        _, _, project, project_bias = cached_weights(self, self._folded)
        if torch.is_autocast_enabled(nodes.device.type):
            # bf16: autocast picks each product's dtype, which the hand-written backward cannot follow
            return graph_step(nodes, blocked, project, project_bias)[2]
        return GraphStep.apply(nodes, blocked, project, project_bias)

    def step(self, nodes: torch.Tensor, blocked: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """One full step over all of ``nodes`` (P, N, k) at once, without autograd; blocked (P, 1, N) bool;
        ``out`` (P, N, k) to write the new nodes into."""
        _, _, project, project_bias = cached_weights(self, self._folded)
        return graph_step(nodes, blocked, project, project_bias, out)[2]

    def first_context(self, nodes: torch.Tensor, blocked: torch.Tensor, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Node 0's edge-weighted sum of the nodes (P, k), the step's output for node 0 before ``Wg`` and the
        ReLU: nodes (P, N, k), blocked (P, 1, N) bool; ``out`` (P, k) to write it into."""
        fold, bias, _, _ = cached_weights(self, self._folded)
        logits = torch.bmm(nodes, torch.addmm(bias, nodes[:, 0], fold)[:, :, None]).transpose(1, 2)
        edges = softmax(logits.masked_fill_(blocked, float("-inf")), dim=2)
        return torch.bmm(edges, nodes, out=None if out is None else out[:, None]).squeeze(1)


def graph_step(nodes: torch.Tensor, blocked: torch.Tensor, project: torch.Tensor, bias: torch.Tensor,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full SGR step, ``relu(softmax_rows(masked (s M + u) sᵀ) (s Wgᵀ + bg))``: nodes (P, N, k), blocked
    (P, 1, N) bool, project (k, 2k) = ``[M, Wgᵀ]``, bias (2k,) = ``[u, bg]``. One product gives each node's query
    (with u, whose term u·s_j belongs to the logits) and value (with bg: the rows of the edges sum to 1, so the
    bias passes through the edge product). Returns (queries and values (P, N, 2k), edges (P, N, N), new nodes)."""
    n_pair, n_node, dim = nodes.shape
    both = torch.addmm(bias, nodes.reshape(-1, dim), project).view(n_pair, n_node, 2 * dim)
    logits = torch.bmm(both[..., :dim], nodes.transpose(1, 2)).masked_fill_(blocked, float("-inf"))
    edges = softmax(logits, dim=2)
    return both, edges, torch.bmm(edges, both[..., dim:], out=out).relu_()


class GraphStep(torch.autograd.Function):
    """``graph_step`` for training, pairs in chunks of about ``NODE_CHUNK_ROWS`` nodes in both passes
    (``pair_chunks``: measured 1.2× faster than one pass over all pairs, its operands staying in the caches), with a
    hand-written backward pass: the node gradient accumulates in place and there is no separate bias term; the
    ReLU's and the softmax's gradients are PyTorch's own fused kernels (a ``masked_fill`` with a full-size boolean
    mask took 0.6–0.9 ms a chunk, 30× ``threshold_backward``).
    Inputs: nodes (P, N, k), blocked (P, 1, N) bool, project (k, 2k) = ``[M, Wgᵀ]``, bias (2k,) = ``[u, bg]``.
    The query and value gradients are kept apart, each contiguous: a batched product written into a strided view
    (half of one (P, N, 2k) buffer) runs matrix by matrix, 4× slower at these shapes."""

    @staticmethod
    def forward(ctx, nodes: torch.Tensor, blocked: torch.Tensor, project: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(nodes)
        ctx.chunks = []  # (pairs, queries and values, edges) of each chunk, for the backward pass
        for pairs in pair_chunks(*nodes.shape[:2]):
            both, edges, _ = graph_step(nodes[pairs], blocked[pairs], project, bias, out[pairs])
            ctx.chunks.append((pairs, both, edges))
        ctx.save_for_backward(nodes, project, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        nodes, project, out = ctx.saved_tensors
        dim = nodes.shape[2]
        grad_nodes = torch.empty_like(nodes)
        halves = (project[:, :dim].T, project[:, dim:].T)
        grad_halves = [project.new_zeros(dim, dim) for _ in range(2)]
        grad_bias = [project.new_zeros(dim) for _ in range(2)]
        for pairs, both, edges in ctx.chunks:
            part = nodes[pairs]
            g = torch.ops.aten.threshold_backward(grad[pairs], out[pairs], 0)   # through the ReLU
            grad_values = torch.bmm(edges.transpose(1, 2), g)
            grad_logits = softmax_backward(torch.bmm(g, both[..., dim:].transpose(1, 2)), edges, 2)  # via d edges
            grad_queries = torch.bmm(grad_logits, part)
            flat = torch.bmm(grad_logits.transpose(1, 2), both[..., :dim], out=grad_nodes[pairs]).view(-1, dim)
            flat_part = part.reshape(-1, dim)
            for k, piece in enumerate((grad_queries.view(-1, dim), grad_values.view(-1, dim))):
                flat.addmm_(piece, halves[k])                                    # nodes through the projection
                grad_halves[k].addmm_(flat_part.T, piece)
                grad_bias[k] += piece.sum(0)
        ctx.chunks = None
        return grad_nodes, None, torch.cat(grad_halves, 1), torch.cat(grad_bias)


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
        return l2norm(torch.einsum("icn,icnk->ick", self.gates(nodes, node_mask), nodes))

    def gates(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """The filtration weights (I, C, N) of the nodes, L1-normalised over each pair's valid nodes."""
        logits = self.attn_sim_w(nodes).squeeze(3)
        if self.training:
            logits = self._per_caption_batchnorm(logits, node_mask)
        else:
            logits = batchnorm_eval(logits[None], self.bn, channel_dim=0)[0]
        return l1norm(torch.sigmoid(logits) * node_mask, dim=2)

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
    """Global/local similarity nodes and the SGR, SAF or AVE head(s) (the released ``EncoderSimilarity``)."""

    def __init__(self, cfg: SGRAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vector = cfg.similarity == "vector"
        glob = cfg.global_node
        self.v_global_w = VisualSelfAttention(cfg.embed_size, cfg.dropout, cfg.num_regions) if glob else None
        self.t_global_w = TextSelfAttention(cfg.embed_size, cfg.dropout) if glob else None
        self.sim_tranloc_w = nn.Linear(cfg.embed_size, cfg.sim_dim) if vector and cfg.uses_local else None
        self.sim_tranglo_w = nn.Linear(cfg.embed_size, cfg.sim_dim) if vector and glob else None
        readouts = [nn.Linear(cfg.sim_dim, 1) for _ in cfg.heads] if vector else []
        if len(readouts) == 1:
            self.sim_eval_w = readouts[0]
        elif readouts:  # joint training: one read-out per head
            self.sgr_eval_w, self.saf_eval_w = readouts
        if "SGR" in cfg.heads:
            self.SGR_module = nn.ModuleList([GraphReasoning(cfg.sim_dim) for _ in range(cfg.sgr_step)])
        if "SAF" in cfg.heads:
            self.SAF_module = AttentionFiltration(cfg.sim_dim)
        for child in (self.sim_tranloc_w, self.sim_tranglo_w, *readouts):
            if child is not None:
                xavier_init_(child)

    def nodes(self, images: RegionEncoding, texts: WordEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity nodes (I, C, N, sim_dim) of every pair — (I, C, N) cosines with scalar similarity — and
        their validity mask (C, N): the global node first (when used), then one node per word (or region)."""
        cfg = self.cfg
        parts = []
        if cfg.global_node:
            parts.append(self._global(images, texts)[:, :, None])
        n_local = torch.zeros_like(texts.lengths)
        if cfg.uses_local:
            parts.append(self._local(images, texts))
            n_local = texts.lengths if cfg.attention == "t2i" else torch.full_like(texts.lengths, cfg.num_regions)
        nodes = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
        return nodes, length_mask(n_local + int(cfg.global_node), nodes.shape[2])

    def _global(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        """The global alignment of every pair: (I, C, sim_dim), or (I, C) cosines."""
        if self.cfg.similarity == "scalar":
            return cosine(images.glob[:, None], texts.glob[None])
        return global_similarity(self.sim_tranglo_w, images, texts)

    def _local(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        """The local alignments of every pair: (I, C, L, ...) per word, or (I, C, R, ...) per region with i2t."""
        cfg = self.cfg
        if cfg.similarity == "vector" and cfg.attention == "t2i":
            # their Gram matrices once for all caption chunks: kept per training batch, or prepared for scoring
            return similarity_vectors(images.regions, texts.words, cfg.lambda_softmax, self.sim_tranloc_w,
                                      gram=images.reused_gram())
        if cfg.similarity == "vector":
            return similarity_vectors(texts.words, images.regions, cfg.lambda_softmax, self.sim_tranloc_w,
                                      texts.lengths).transpose(0, 1)
        if cfg.attention == "t2i":
            return cosine(attended_regions(images.regions, texts.words, cfg.lambda_softmax), texts.words[None])
        attended = cross_attention(texts.words, images.regions, cfg.lambda_softmax, texts.lengths)
        return cosine(attended.transpose(0, 1), images.regions[:, None])

    def head_scores(self, images: RegionEncoding, texts: WordEncoding) -> list[torch.Tensor]:
        """The score matrix (I, C) of each head, over one shared set of similarity nodes."""
        nodes, mask = self.nodes(images, texts)
        if self.cfg.module == "AVE":
            per_node = nodes if self.cfg.similarity == "scalar" else torch.sigmoid(self.sim_eval_w(nodes)).squeeze(3)
            weights = mask.to(per_node.dtype)
            return [(per_node * weights).sum(2) / weights.sum(1)]
        readouts = [self.sim_eval_w] if len(self.cfg.heads) == 1 else [self.sgr_eval_w, self.saf_eval_w]
        scores = []
        for head, readout in zip(self.cfg.heads, readouts):
            vec = self._reason(nodes, mask) if head == "SGR" else self.SAF_module(nodes, mask)
            scores.append(torch.sigmoid(readout(vec)).squeeze(2))
        return scores

    def _reason(self, nodes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SGR's reasoned vector (I, C, sim_dim): node 0 after the steps, or without a global node the mean of
        the valid nodes after them."""
        n_img, n_cap, n_node, dim = nodes.shape
        flat = nodes.reshape(n_img * n_cap, n_node, dim)
        flat_mask = mask.repeat(n_img, 1)
        if not self.cfg.global_node:
            for module in self.SGR_module:
                flat = module(flat, flat_mask)
            return masked_mean(flat, flat_mask).view(n_img, n_cap, dim)
        if not len(self.SGR_module):
            return flat[:, 0].reshape(n_img, n_cap, dim)
        *full, last = self.SGR_module
        if torch.is_grad_enabled():
            for module in full:
                flat = module(flat, flat_mask)
            return last(flat, flat_mask, first_only=True).view(n_img, n_cap, dim)
        # scoring: each chunk of pairs through every step while it is in the caches, node 0's projection at the end
        context = flat.new_empty(len(flat), dim)
        for pairs in pair_chunks(n_img * n_cap, n_node, dim):
            part, blocked = flat[pairs], ~flat_mask[pairs, None, :]
            for module in full:
                part = module.step(part, blocked)
            last.first_context(part, blocked, out=context[pairs])
        return last.sim_graph_w(context).relu_().view(n_img, n_cap, dim)

    def forward(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        """Scores (I, C); with two heads, the mean of theirs."""
        scores = self.head_scores(images, texts)
        return scores[0] if len(scores) == 1 else torch.stack(scores).mean(0)


class SGRAF(RegionWordMatcher):
    """SGR or SAF as a ``Matcher``: region encoder ``img_enc``, GRU text encoder ``txt_enc``, ``sim_enc``."""

    def __init__(self, config: SGRAFConfig) -> None:
        super().__init__(config, lambda: SimilarityEncoder(config))

    def pair_bytes_per_word(self) -> int:
        """Per (pair, word): attended vectors and their differences (d each), node-sized terms; with region
        nodes (i2t) the per-pair memory (R attended vectors, differences, nodes) spread over ``PAIR_SPREAD_WORDS``."""
        cfg = self.config
        per_word = word_pair_bytes(cfg)
        if cfg.attention == "i2t":
            per_word = max(per_word, 4 * cfg.num_regions * (3 * cfg.embed_size + 8 * cfg.sim_dim) // PAIR_SPREAD_WORDS)
        return per_word

    @property
    def independent_pair_scores(self) -> bool:
        """One head without SAF, whose training BatchNorm pools the statistics of each caption's pairs."""
        return len(self.config.heads) == 1 and "SAF" not in self.config.heads

    def head_scores(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        """Score matrices (H, I, C) of the model's heads (training sums their losses; ``score`` is their mean)."""
        return torch.stack(self.sim_enc.head_scores(images, texts.trimmed()))

    def set_caption_stats_gather(self, gather: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """SAF's BatchNorm keeps per-caption statistics: data-parallel runs gather them over the processes."""
        if "SAF" in self.config.heads:
            self.sim_enc.SAF_module.gather_caption_stats = gather

    def filtration_gates(self, image: RegionEncoding, text: WordEncoding
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SAF's gates of the global node and of each word's node (None without word nodes after a global one)."""
        cfg = self.config
        if "SAF" not in cfg.heads or not cfg.global_node or cfg.attention != "t2i":
            return None, None
        nodes, mask = self.sim_enc.nodes(image, text)
        weights = self.sim_enc.SAF_module.gates(nodes, mask)[0, 0]
        return weights[0], weights[1:]


register_preset("sgr", SGRAF, SGRAFConfig, "SGR: similarity graph reasoning (3 steps) over the global and local "
                "similarity vectors.", module="SGR")
register_preset("saf", SGRAF, SGRAFConfig, "SAF: similarity attention filtration over the global and local "
                "similarity vectors.", module="SAF")
register_preset("ave", SGRAF, SGRAFConfig, "Average aggregation (SGRAF Table 4's AA): the mean of sigmoid(w . s) "
                "over the similarity nodes.", module="AVE")
register_preset("sgraf_joint", SGRAF, SGRAFConfig, "SGR and SAF trained jointly over shared similarity nodes (SGRAF "
                "Table 5): summed loss, mean score.", module="SGR+SAF")
