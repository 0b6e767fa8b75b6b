"""TSHSR (Chen et al., "Two-stream Hierarchical Similarity Reasoning for Image-text Matching"), seed 002, §III.

No code was released; this module implements the paper's equations. Per image-caption pair (K regions, L words):

1. Encoders (§III-A), shared with SGR: regions ``V = l2norm(fc(v))``, words ``T`` from the Bi-GRU, global
   vectors ``v̄ = V ⊙ q̄_v``, ``t̄ = T ⊙ q̄_t`` with ``q̄`` the mean (see choice 1).
2. Similarity vectors (Eq. 1, as in SGR): ``S(x, y) = l2norm(W (x - y)²)``; the global node ``s^g = S(v̄, t̄)``.
3. Image-to-text stream (Eq. 2): each word attends over the regions (SGR's attention); nodes
   ``S^{i2t} = [S(α_1, t_1), ..., S(α_L, t_L), s^g]`` (L + 1 nodes, the global node last, as the paper numbers it).
4. Text-to-image stream (Eq. 3): each region attends over the caption's words; nodes
   ``S^{t2i} = [S(v_1, β_1), ..., S(v_K, β_K), s^g]`` (K + 1 nodes).
5. HSR layer (Eqs. 4-6), ``hsr_layers`` = M times: ``R = softmax_rows((W_p S)(W_q S)ᵀ)``,
   ``R' = R ⊙ sigmoid(f(R))`` with ``f`` a 3×3 convolution, ``S ← W_r(W_g(R' S)) + S``; the stream's output is
   the global node of the last layer.
6. A stream without HSR is average-pooled over its nodes (Eq. 7): the text-to-image stream of the paper's model,
   or any stream with M = 0 (Table III's "0"). The two streams' outputs are added (Eq. 8): ``S* = S*_i2t + S*_t2i``.
7. Score ``sigmoid(w_eval · S*)`` (SGR's read-out).

Ablation switches (tables III-V): ``hsr_layers`` (M), ``hsr_conv`` (off: ``R' = R``, the re-weighting removed and
nothing else, i.e. SGR's softmax-edge propagation in the HSR layer's residual form — Table IV's "traditional
similarity reasoning"), ``streams`` ("both" | "i2t" = the paper's "Ours (HSR)" | "t2i"), and ``t2i_hsr`` (HSR on
the text-to-image stream instead of Eq. 7's pooling — Table V's T2I rows, with ``streams="t2i"``). Readings of
the paper (below, "Departures"): ``readout`` ("sigmoid" | "inner") and ``relation_norm`` ("softmax" | "none").

Where the paper leaves a detail open, the choice and its reason:

1. Global vectors. ``V ⊙ q̄_v`` is literally a K × d matrix, but Eq. 1 needs d-vectors, and the paper says the
   construction is "inspired by [17]" (SGRAF), whose global vector is exactly a reduction of ``V ⊙ q̄``: the
   regions' and the mean's embeddings are multiplied element-wise, mapped to one weight per region, softmaxed
   over regions, and the weighted sum of regions is L2-normalised. That module (SGRAF's ``VisualSelfAttention`` /
   ``TextSelfAttention``) is used; the parameter-free reductions (e.g. summing ``V ⊙ q̄`` over regions, which
   gives ``K q̄²``) lose the sign of every coordinate.
2. Attention. Eqs. 2-3 are SCAN's: ``[c]+`` normalised across the attending side, softmax over the attended side
   at λ = 9. ``[c]+`` is LeakyReLU(0.1), as in SGR's released code (whose paper also writes ``max(0, ·)``).
   Padding words are left out of the text-to-image softmax.
3. Shapes. Every W is ``sim_dim × sim_dim`` with a bias (nn.Linear), as SGR's graph weights, except ``W_q``:
   its bias adds a term constant along each softmax row of R, which cancels (it would never get a gradient).
   ``W_r`` acts on each node's features (it cannot mix nodes: the node count varies with L), as VSRN's ``W_r``
   from which Eq. 6 comes; no BatchNorm (VSRN has one; the paper does not mention it, and it would couple the
   pairs of a batch).
4. Normalisation of R: a softmax over each row (over the valid nodes), SGR's edge normalisation. It keeps ``R' S``
   bounded whatever L is, and with the convolution off the layer reduces to SGR's edge propagation, which is how
   Table IV compares the two. The 3×3 convolution (one channel, with bias, zero padding 1) runs on this R.
5. ``W_g`` is applied after the node product, ``W_g(R' S)``, as SGR applies its ``W_g``; no nonlinearity (Eq. 6
   has none; SGR's ReLU is not in it).
6. Node order: the global node is last (``S_{L+1}``, ``S_{K+1}`` in the paper), so the convolution's window
   around the global node covers the last word. Variable-length captions: the relation matrix is zero outside
   the caption's (L+1) × (L+1) block before the convolution — with the convolution's zero padding that equals
   the convolution of the unpadded matrix — and R' is then zero there too; a caption's score does not depend on
   the padded length of its tile. A 1-word caption has 2 nodes; the convolution still sees its zero border.
7. Read-out: Eq. 8 adds two vectors, so each stream gives one: the last HSR layer's global node (the "global
   alignment", as SGR reads its global node) or, without HSR, the mean of Eq. 7. The score is SGR's
   ``sigmoid(w_eval · S*)``. The global similarity ``W`` (``sim_tranglo_w``) is shared by both streams (``s^g``
   is one quantity in the paper); each stream has its own local ``W`` (``sim_tranloc_w``) and HSR weights.

Departures from the printed equations (docs/models.md lists them too; ``itmatch reproduce`` labels every TSHSR
row with the ``readout`` and ``relation_norm`` it was trained with):

a. Score read-out. Eq. 9 scores with ``S_γ``, "e.g. inner product"; ``S*`` is a similarity vector, not a pair
   of embeddings, so the default reads it as SGR does, ``sigmoid(w_eval · S*)``. ``readout = "inner"`` scores
   with the inner product ``w_eval · S* + b`` itself, unsquashed (the hinge of Eq. 9 then sees raw scores).
b. Eq. 1's normalisation. Printed ``W |x - y|² / ‖x - y‖₂``; computed ``W |x - y|² / ‖W |x - y|²‖₂``, the
   equation of SGRAF that Eq. 1 quotes ("Diao et al. [17] used a vector ... by"). No switch: the printed
   denominator is read as a slip in quoting it.
c. R of Eq. 4 is printed unnormalised, ``(W_p S)ᵀ(W_q S)``; the default softmaxes each row (choice 4).
   ``relation_norm = "none"`` leaves R unnormalised (zero at padding), ``(W_p S + b_p)ᵀ(W_q S)``: ``W_p`` keeps its
   bias (choice 3), which Eq. 4 does not print. Then node values grow with the caption's
   length and over the layers (at the published sizes and a random start, the largest image-to-text output
   coordinate over captions of 5-40 words is ~5 against ~0.3 with the softmax; at small sizes, far more).
d. M = 0 (Table III's "0"): Eq. 6 needs M ≥ 1. Read as "no HSR": the image-to-text stream is mean-pooled like
   Eq. 7's text-to-image stream. Reading "the global alignment at the last layer" literally would give the
   initial global node ``s^g`` alone; not offered.
e. Table IV's "traditional similarity reasoning": read as this HSR layer with the convolution off
   (``hsr_conv = False``: R' = R, with ``W_r``, ``W_g`` and the residual kept), so the table isolates Eq. 5's
   re-weighting. SGR's own step (``ReLU(W_g(R S))``, no residual, no ``W_r``) is the other reading; not offered.
f. Eqs. 2-3's ``[c]+ = max(0, cos)`` is LeakyReLU(0.1) (choice 2: SGR's released attention); not offered.
g. The attended vectors ``α^v_j`` are L2-normalised before Eq. 1's difference, as SGR's released attention does;
   not offered.

How it is computed fast (image × caption tiles, no loop per caption):
- the attention of both directions is one matrix product per tile; ``similarity_vectors`` makes
  ``attended - own`` in cache-sized blocks, squares each in place and projects it (in training its backward
  recomputes the blocks), so the large (pairs, K or L, d) tensor never goes to memory;
- ``W_p``/``W_q`` fold into ``M = W_pᵀ W_q`` and ``W_r W_g`` into one matrix (each pair is two linear maps in a
  row); the last layer computes only the rows the global node's output needs (its own row and, with the
  convolution, the row above it);
- each stream is finished to its (I, C, sim_dim) output before the other starts, so their working memories
  do not add up.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.fields import check_ranges
from itmatch.models.attention import TextSelfAttention, VisualSelfAttention, similarity_vectors
from itmatch.models import flops
from itmatch.models.layers import cached_weights, in_pair_chunks, length_mask, xavier_init_
from itmatch.models.region_word import (PAIR_SPREAD_WORDS, RegionEncoding, RegionWordConfig, RegionWordMatcher,
                                        WordEncoding, global_similarity, word_pair_bytes)
from itmatch.models.registry import register_preset
from itmatch.models.softmax import softmax

STREAMS = ("both", "i2t", "t2i")
READOUTS = ("sigmoid", "inner")
RELATION_NORMS = ("softmax", "none")


@dataclasses.dataclass
class TSHSRConfig(RegionWordConfig):
    """Hyper-parameters of TSHSR: SGR's encoder and similarity sizes (``RegionWordConfig``, GloVe and frozen word
    tables included) plus the HSR/stream ablation switches."""

    hsr_layers: int = 3            # M; 0 = no reasoning, the stream is average-pooled
    hsr_conv: bool = True          # the 3×3 convolution re-weighting of R (Eq. 5); off: R' = R
    streams: str = "both"          # "both" (TSHSR), "i2t" (the paper's "HSR"), "t2i"
    t2i_hsr: bool = False          # HSR on the text-to-image stream instead of average pooling (Table V)
    # readings of the paper where two are plausible (module docstring, "Departures")
    readout: str = "sigmoid"       # "sigmoid": sigmoid(w_eval · S*) (SGR's); "inner": w_eval · S* (Eq. 9)
    relation_norm: str = "softmax"  # R of Eq. 4: "softmax" over each row (SGR's edges); "none": R as printed

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, non_negative=("hsr_layers",),
                     choices={"streams": STREAMS, "readout": READOUTS, "relation_norm": RELATION_NORMS})
        if self.t2i_hsr and self.streams == "i2t":
            raise ItmatchError("t2i_hsr needs the text-to-image stream; use streams='t2i' or 'both'")

    def pair_mflop(self, words: int) -> float:
        """Forward MFLOP of one pair's work for a caption of ``words`` tokens (``itmatch.models.flops``)."""
        d, k, regions = self.embed_size, self.sim_dim, self.num_regions

        def reasoning(nodes: int) -> float:
            """M - 1 full HSR layers, then the last layer's global node (its row and, with the convolution, the
            row above)."""
            if not self.hsr_layers:
                return 0.0
            last = flops.readout_step(nodes, k, self.hsr_conv)
            return (self.hsr_layers - 1) * flops.graph_step(nodes, k, self.hsr_conv) + last

        total = flops.linear(1, d, k) + flops.linear(1, k, 1)
        if self.uses_i2t:
            total += flops.cross_attention(words, regions, d) + flops.linear(words, d, k) + reasoning(words + 1)
        if self.uses_t2i:
            total += flops.cross_attention(regions, words, d) + flops.linear(regions, d, k)
            total += reasoning(regions + 1) if self.t2i_hsr else 0.0
        return total / 1e6

    @property
    def uses_i2t(self) -> bool:
        return self.streams in ("both", "i2t")

    @property
    def uses_t2i(self) -> bool:
        return self.streams in ("both", "t2i")


class HSRLayer(nn.Module):
    """One hierarchical similarity reasoning layer (Eqs. 4-6) over each pair's similarity nodes."""

    def __init__(self, sim_dim: int, conv: bool, normalise: bool = True) -> None:
        super().__init__()
        self.normalise = normalise
        self.w_p = nn.Linear(sim_dim, sim_dim)
        self.w_q = nn.Linear(sim_dim, sim_dim, bias=False)  # a key bias is constant along a softmax row
        self.w_g = nn.Linear(sim_dim, sim_dim)
        self.w_r = nn.Linear(sim_dim, sim_dim)
        xavier_init_(self)
        self.conv = nn.Conv2d(1, 1, 3, padding=1) if conv else None

    def _folded(self) -> tuple[torch.Tensor, ...]:
        """``(M, u, W, b, [M, W], [u, 0])``: relation logits ``(W_p s_p + b_p)·(W_q s_q) = (s_p M + u)·s_q`` with
        ``M = W_pᵀ W_q``, ``u = b_pᵀ W_q``; update ``W_r(W_g x) = x W + b`` (two linear maps in a row); and one
        projection giving each node's query (u included) and value."""
        fold = self.w_p.weight.T @ self.w_q.weight
        bias = self.w_p.bias @ self.w_q.weight
        mix = (self.w_r.weight @ self.w_g.weight).T
        mix_bias = self.w_r.weight @ self.w_g.bias + self.w_r.bias
        return fold, bias, mix, mix_bias, torch.cat([fold, mix], 1), torch.cat([bias, torch.zeros_like(bias)])

    def forward(self, nodes: torch.Tensor, n_nodes: torch.Tensor, readout: bool = False) -> torch.Tensor:
        """nodes (P, N, k) valid up to n_nodes (P,) -> updated nodes (P, N, k), or only the last valid node
        (the global node) (P, k) when ``readout``. Positions past n_nodes are ignored (they may hold anything).
        Without autograd the pairs go through in cache-sized chunks (``in_pair_chunks``)."""
        fold, bias, mix, mix_bias, project, project_bias = cached_weights(self, self._folded)
        valid = length_mask(n_nodes, nodes.shape[1])
        if readout:
            return self._readout(nodes, n_nodes, valid, fold, bias, mix, mix_bias)
        return in_pair_chunks(lambda part, mask, out=None: self._update(part, mask, project, project_bias, mix_bias,
                                                                         out), nodes, valid)

    def _update(self, nodes: torch.Tensor, valid: torch.Tensor, project: torch.Tensor, project_bias: torch.Tensor,
                mix_bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 6 for all nodes: ``R' (S W) + b + S``, the residual added by the edge product itself (R' rows need
        not sum to 1, so b is added after it)."""
        n_pair, n_node, dim = nodes.shape
        query, value = (torch.addmm(project_bias, nodes.reshape(-1, dim), project)
                        .view(n_pair, n_node, -1).split(dim, dim=2))
        relation = self._relation(torch.bmm(query, nodes.transpose(1, 2)), valid) * valid[:, :, None]
        if self.conv is not None:
            relation = relation * torch.sigmoid(self._convolve(relation[:, None], (1, 1)))[:, 0]
        return torch.baddbmm(nodes, relation, value, out=out).add_(mix_bias)

    def _convolve(self, maps: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        """Eq. 5's 3×3 convolution of relation maps (P, 1, H, W). On a CPU in float32 through PyTorch's own
        im2col kernel (``thnn_conv2d``, with autograd): for these one-channel maps of a few dozen nodes it ran in
        40–49 µs where oneDNN's, which ``conv2d`` picks, took 70–120 µs (TSHSR's scoring 2–3 % faster). Elsewhere,
        and under autocast (which only ``conv2d`` follows), ``conv2d``."""
        if maps.device.type == "cpu" and maps.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return torch.ops.aten.thnn_conv2d(maps, self.conv.weight, list(self.conv.kernel_size), self.conv.bias,
                                              [1, 1], list(padding))
        return nn.functional.conv2d(maps, self.conv.weight, self.conv.bias, padding=padding)

    def _relation(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """R from its logits (P, rows, N): a softmax over each row's valid columns (``valid`` (P, N)), or with
        ``normalise`` off the logits themselves; zero in padded columns either way."""
        if self.normalise:
            return softmax(logits.masked_fill(~valid[:, None, :], float("-inf")), dim=2)
        return logits.masked_fill(~valid[:, None, :], 0.0)

    def _readout(self, nodes: torch.Tensor, n_nodes: torch.Tensor, valid: torch.Tensor, fold: torch.Tensor,
                 bias: torch.Tensor, mix: torch.Tensor, mix_bias: torch.Tensor) -> torch.Tensor:
        """The last valid node's update alone: its relation row, and with the convolution the row above (the row
        below is zero, past the last node), which is all that row of ``f(R)`` reads."""
        reach = 2 if self.conv is not None else 1
        index = (n_nodes[:, None] - torch.arange(reach, 0, -1, device=nodes.device))[:, :, None]
        rows = nodes.gather(1, index.expand(-1, -1, nodes.shape[2]))                        # (P, reach, k)
        relation = self._relation(torch.bmm(rows @ fold + bias, nodes.transpose(1, 2)), valid)  # (P, reach, N)
        if self.conv is not None:
            window = nn.functional.pad(relation, (0, 0, 0, 1))[:, None]                      # rows p-1, p, p+1
            gate = torch.sigmoid(self._convolve(window, (0, 1)))
            relation = relation[:, -1:] * gate[:, 0]
        return (torch.bmm(relation, nodes)[:, 0] @ mix + mix_bias) + rows[:, -1]


class SimilarityStream(nn.Module):
    """One stream: local similarity vectors ``l2norm(W (x - y)²)``, then HSR read at the global node, or the
    mean of the nodes (Eq. 7) when it has no HSR layers."""

    def __init__(self, embed_size: int, sim_dim: int, hsr_layers: int, conv: bool, normalise: bool = True) -> None:
        super().__init__()
        self.sim_tranloc_w = nn.Linear(embed_size, sim_dim)
        xavier_init_(self.sim_tranloc_w)
        self.hsr = nn.ModuleList([HSRLayer(sim_dim, conv, normalise) for _ in range(hsr_layers)])

    def forward(self, nodes: torch.Tensor, n_nodes: torch.Tensor) -> torch.Tensor:
        """nodes (P, N, k), the global node at n_nodes - 1 and zeros past it -> stream vector (P, k)."""
        if not len(self.hsr):
            return nodes.sum(1) / n_nodes[:, None].to(nodes.dtype)
        for layer in self.hsr[:-1]:
            nodes = layer(nodes, n_nodes)
        return self.hsr[-1](nodes, n_nodes, readout=True)


class TwoStreamSimilarity(nn.Module):
    """Global vectors, the two similarity streams and the read-out ``sigmoid(w_eval · (S*_i2t + S*_t2i))``."""

    def __init__(self, cfg: TSHSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.v_global_w = VisualSelfAttention(cfg.embed_size, cfg.dropout, cfg.num_regions)
        self.t_global_w = TextSelfAttention(cfg.embed_size, cfg.dropout)
        self.sim_tranglo_w = nn.Linear(cfg.embed_size, cfg.sim_dim)
        self.sim_eval_w = nn.Linear(cfg.sim_dim, 1)
        xavier_init_(self.sim_tranglo_w)
        xavier_init_(self.sim_eval_w)
        normalise = cfg.relation_norm == "softmax"
        make = SimilarityStream
        self.i2t = (make(cfg.embed_size, cfg.sim_dim, cfg.hsr_layers, cfg.hsr_conv, normalise) if cfg.uses_i2t
                    else None)
        self.t2i = (make(cfg.embed_size, cfg.sim_dim, cfg.hsr_layers if cfg.t2i_hsr else 0, cfg.hsr_conv,
                         normalise) if cfg.uses_t2i else None)

    def stream_vectors(self, images: RegionEncoding, texts: WordEncoding) -> dict[str, torch.Tensor]:
        """The active streams' output vectors, each (I, C, sim_dim), keyed "i2t"/"t2i"."""
        glob = global_similarity(self.sim_tranglo_w, images, texts)
        out = {}
        if self.i2t is not None:
            out["i2t"] = self._image_to_text(images, texts, glob)
        if self.t2i is not None:
            out["t2i"] = self._text_to_image(images, texts, glob)
        return out

    def _image_to_text(self, images: RegionEncoding, texts: WordEncoding, glob: torch.Tensor) -> torch.Tensor:
        """Words attend to regions; nodes [word nodes, global] per caption, zero past the global node."""
        n_img, n_cap = len(images), len(texts)
        local = similarity_vectors(images.regions, texts.words, self.cfg.lambda_softmax, self.i2t.sim_tranloc_w,
                                   gram=images.reused_gram())
        nodes = nn.functional.pad(local, (0, 0, 0, 1))                                          # (I, C, L+1, k)
        position = torch.arange(nodes.shape[2], device=nodes.device)
        nodes.masked_fill_((position > texts.lengths[:, None])[None, :, :, None], 0)
        nodes[:, torch.arange(n_cap, device=nodes.device), texts.lengths] = glob                  # the global node
        n_nodes = (texts.lengths + 1).repeat(n_img)
        return self.i2t(nodes.flatten(0, 1), n_nodes).view(n_img, n_cap, -1)

    def _text_to_image(self, images: RegionEncoding, texts: WordEncoding, glob: torch.Tensor) -> torch.Tensor:
        """Regions attend to words; nodes [region nodes, global], computed caption-major and transposed."""
        n_img, n_cap = len(images), len(texts)
        local = similarity_vectors(texts.words, images.regions, self.cfg.lambda_softmax, self.t2i.sim_tranloc_w,
                                   texts.lengths)                                               # (C, I, K, k)
        if not len(self.t2i.hsr):  # Eq. 7's mean over [region nodes, global], without concatenating them
            return ((local.sum(2) + glob.transpose(0, 1)) / (local.shape[2] + 1)).transpose(0, 1)
        nodes = torch.cat([local, glob.transpose(0, 1)[:, :, None]], 2)
        n_nodes = torch.full((n_cap * n_img,), nodes.shape[2], device=nodes.device)
        return self.t2i(nodes.flatten(0, 1), n_nodes).view(n_cap, n_img, -1).transpose(0, 1)

    def forward(self, images: RegionEncoding, texts: WordEncoding) -> torch.Tensor:
        """Scores (I, C) of every image × caption pair."""
        total = sum(self.stream_vectors(images, texts).values())
        logits = self.sim_eval_w(total).squeeze(2)
        return torch.sigmoid(logits) if self.cfg.readout == "sigmoid" else logits


class TSHSR(RegionWordMatcher):
    """TSHSR as a ``Matcher``: region encoder ``img_enc``, GRU text encoder ``txt_enc``, ``sim_enc``."""

    def __init__(self, config: TSHSRConfig) -> None:
        super().__init__(config, lambda: TwoStreamSimilarity(config))

    @property
    def independent_pair_scores(self) -> bool:
        """One score, and no BatchNorm or other statistics over pairs."""
        return True

    def pair_bytes_per_word(self) -> int:
        """The image-to-text stream's memory grows with the words (attended vectors and their differences, d
        each; node-sized terms), as SGR's. The text-to-image stream's is per pair (K attended d-vectors, their
        differences, K similarity vectors) whatever L is; the engine budgets per (pair, word), so it is spread
        over 8 words (L + 1 for a 7-word caption; Flickr30K/COCO captions average about 14 tokens with
        <start>/<end>). Tiles of shorter captions may exceed the budget by up to 8 / (L + 1) (4× for a 1-word
        caption); spreading it over 2 words instead would keep every tile within budget but make CPU tiles of
        typical captions a few pairs wide, several times slower. The streams run one after the other: the
        larger counts."""
        cfg = self.config
        d, k, regions = cfg.embed_size, cfg.sim_dim, cfg.num_regions
        per_word = word_pair_bytes(cfg) if cfg.uses_i2t else 4 * 6 * regions
        if cfg.uses_t2i:
            per_word = max(per_word, 4 * regions * (2 * d + 4 * k) // PAIR_SPREAD_WORDS)
        return per_word


register_preset("tshsr", TSHSR, TSHSRConfig, "TSHSR: HSR over image-to-text similarities plus pooled text-to-image "
                "similarities (the paper's model).")
register_preset("tshsr_i2t", TSHSR, TSHSRConfig, "The image-to-text stream with HSR alone: the paper's \"Ours (HSR)\".",
                streams="i2t")
register_preset("tshsr_t2i", TSHSR, TSHSRConfig, "The text-to-image stream with HSR alone (Table V's T2I rows).",
                streams="t2i", t2i_hsr=True)
