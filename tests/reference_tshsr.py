"""A literal reference of TSHSR (seed 002, §III), one caption at a time, straight from the paper's equations.

It reads the weights of an itmatch ``TSHSR`` model and recomputes everything with plain ops on the unpadded
caption: SCAN attention in both directions (Eqs. 2-3), similarity vectors (Eq. 1), the node sets with the
global node last, every HSR layer in full (``R = softmax((W_p S)(W_q S)ᵀ)``, ``R' = R ⊙ sigmoid(conv3×3(R))``,
``S* = W_r(W_g(R' S)) + S``, Eqs. 4-6) with no folding and no padding, the global node or the mean (Eq. 7) read
out, the streams added (Eq. 8), ``sigmoid(w_eval · S*)``. It is the oracle for the batched model. The readings
of ``relation_norm = "none"`` (R as printed, no softmax) and ``readout = "inner"`` (``w_eval · S*``) follow the
model's config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from reference_sgraf import _l2, encode_caption, encode_image, scan_attention, text_sa, visual_sa


def hsr_layer(layer, nodes: torch.Tensor, softmax: bool = True) -> torch.Tensor:
    """Eqs. 4-6 on nodes (n, N, k); ``softmax`` normalises each row of R."""
    relation = torch.bmm(layer.w_p(nodes), layer.w_q(nodes).transpose(1, 2))
    if softmax:
        relation = torch.softmax(relation, dim=-1)
    if layer.conv is not None:
        relation = relation * torch.sigmoid(F.conv2d(relation.unsqueeze(1), layer.conv.weight, layer.conv.bias,
                                                     padding=1)).squeeze(1)
    return layer.w_r(layer.w_g(torch.bmm(relation, nodes))) + nodes


def stream_output(stream, nodes: torch.Tensor, softmax: bool = True) -> torch.Tensor:
    """HSR layers then the global (last) node, or the mean over nodes (Eq. 7) without layers: (n, k)."""
    if len(stream.hsr) == 0:
        return nodes.mean(1)
    for layer in stream.hsr:
        nodes = hsr_layer(layer, nodes, softmax)
    return nodes[:, -1]


@torch.no_grad()
def reference_vectors(model, feats: torch.Tensor, captions: list[list[int]]) -> dict[str, torch.Tensor]:
    """Per-stream outputs ``{"i2t"|"t2i": (n_images, n_captions, k)}`` of ``model`` (eval semantics)."""
    sim = model.sim_enc
    smooth = model.config.lambda_softmax
    softmax = model.config.relation_norm == "softmax"
    regions = encode_image(model, feats)
    img_glo = visual_sa(sim.v_global_w, regions)
    n_image = regions.size(0)
    columns: dict[str, list[torch.Tensor]] = {}
    for ids in captions:
        words = encode_caption(model, ids).repeat(n_image, 1, 1)
        cap_glo = text_sa(sim.t_global_w, words[:1])
        glob = _l2(sim.sim_tranglo_w(torch.pow(img_glo - cap_glo, 2)))
        if sim.i2t is not None:
            attended = scan_attention(words, regions, smooth)                   # (n, L, d): words attend
            local = _l2(sim.i2t.sim_tranloc_w(torch.pow(attended - words, 2)))
            nodes = torch.cat([local, glob.unsqueeze(1)], 1)
            columns.setdefault("i2t", []).append(stream_output(sim.i2t, nodes, softmax))
        if sim.t2i is not None:
            attended = scan_attention(regions, words, smooth)                   # (n, K, d): regions attend
            local = _l2(sim.t2i.sim_tranloc_w(torch.pow(regions - attended, 2)))
            nodes = torch.cat([local, glob.unsqueeze(1)], 1)
            columns.setdefault("t2i", []).append(stream_output(sim.t2i, nodes, softmax))
    return {name: torch.stack(vecs, 1) for name, vecs in columns.items()}


@torch.no_grad()
def reference_scores(model, feats: torch.Tensor, captions: list[list[int]]) -> torch.Tensor:
    """Scores (n_images, n_captions) of ``model`` (eval semantics) computed caption by caption."""
    total = sum(reference_vectors(model, feats, captions).values())
    logits = model.sim_enc.sim_eval_w(total).squeeze(2)
    return torch.sigmoid(logits) if model.config.readout == "sigmoid" else logits
