"""A literal reference of the SGRAF authors' scoring, one caption at a time, as the released code runs it.

It reads the weights of an itmatch ``SGRAF`` model but recomputes everything with plain functional ops in the
authors' order (repeat the caption over images, SCAN attention with transposes, three q/k/g projections per
SGR step over all nodes, node 0 read at the end). It is the oracle for the fast batched engine.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _l2(x, dim=-1):
    return x / (torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def _l1(x, dim=-1):
    return x / (torch.abs(x).sum(dim=dim, keepdim=True) + 1e-8)


def _bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def encode_image(model, feats):
    """(N, 36, D) -> region embeddings (N, 36, d)."""
    emb = F.linear(feats, model.img_enc.fc.weight, model.img_enc.fc.bias)
    return _l2(emb) if model.config.img_norm else emb


def encode_caption(model, ids):
    """One caption, unpadded: ids (L,) -> word embeddings (1, L, d)."""
    enc = model.txt_enc
    emb = enc.embed(torch.as_tensor(ids)[None])
    out, _ = enc.cap_rnn(emb)
    if enc.bidirectional:
        half = out.shape[2] // 2
        out = (out[:, :, :half] + out[:, :, half:]) / 2
    return _l2(out) if model.config.txt_norm else out


def visual_sa(sa, local):
    lin = sa.embedding_local[0]
    l_emb = torch.tanh(_bn_eval(F.linear(local, lin.weight, lin.bias), sa.embedding_local[1]))
    raw = torch.mean(local, 1)
    lin = sa.embedding_global[0]
    g_emb = torch.tanh(_bn_eval(F.linear(raw, lin.weight, lin.bias), sa.embedding_global[1]))
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    common = sa.embedding_common[0]
    weights = torch.softmax(F.linear(l_emb.mul(g_emb), common.weight, common.bias).squeeze(2), dim=1)
    return _l2((weights.unsqueeze(2) * local).sum(dim=1))


def text_sa(sa, local):
    l_emb = torch.tanh(sa.embedding_local[0](local))
    g_emb = torch.tanh(sa.embedding_global[0](torch.mean(local, 1)))
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(sa.embedding_common[0](l_emb.mul(g_emb)).squeeze(2), dim=1)
    return _l2((weights.unsqueeze(2) * local).sum(dim=1))


def scan_attention(query, context, smooth):
    attn = torch.bmm(context, torch.transpose(query, 1, 2))
    attn = F.leaky_relu(attn, 0.1)
    attn = _l2(attn, 2)
    attn = torch.transpose(attn, 1, 2).contiguous()
    attn = F.softmax(attn * smooth, dim=2)
    attn_t = torch.transpose(attn, 1, 2).contiguous()
    weighted = torch.bmm(torch.transpose(context, 1, 2), attn_t)
    return _l2(torch.transpose(weighted, 1, 2), dim=-1)


def graph_step(step, sim_emb):
    query = step.graph_query_w(sim_emb)
    key = step.graph_key_w(sim_emb)
    edge = torch.softmax(torch.bmm(query, key.permute(0, 2, 1)), dim=-1)
    return torch.relu(step.sim_graph_w(torch.bmm(edge, sim_emb)))


def attention_filtration(saf, sim_emb):
    logits = saf.attn_sim_w(sim_emb).permute(0, 2, 1)
    attn = _l1(torch.sigmoid(_bn_eval(logits, saf.bn)), dim=-1)
    return _l2(torch.matmul(attn, sim_emb).squeeze(1), dim=-1)


def caption_column(model, img_emb: torch.Tensor, img_glo: torch.Tensor, cap_i: torch.Tensor,
                   text_global: Callable | None = None, filtration: Callable | None = None) -> torch.Tensor:
    """One caption's scores (n_images, 1) against images (regions ``img_emb``, global vectors ``img_glo``):
    the body of the released ``EncoderSimilarity.forward`` loop; ``cap_i`` (1, L, d) unpadded. ``text_global``
    (caption -> global vector) and ``filtration`` (SAF: nodes -> vector) default to eval semantics."""
    sim = model.sim_enc
    n_image = img_emb.size(0)
    cap_i_expand = cap_i.repeat(n_image, 1, 1)
    cap_glo_i = (text_global or (lambda cap: text_sa(sim.t_global_w, cap)))(cap_i)
    context_img = scan_attention(cap_i_expand, img_emb, model.config.lambda_softmax)
    sim_loc = _l2(sim.sim_tranloc_w(torch.pow(torch.sub(context_img, cap_i_expand), 2)), dim=-1)
    sim_glo = _l2(sim.sim_tranglo_w(torch.pow(torch.sub(img_glo, cap_glo_i), 2)), dim=-1)
    sim_emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
    if model.config.module == "SGR":
        for step in sim.SGR_module:
            sim_emb = graph_step(step, sim_emb)
        sim_vec = sim_emb[:, 0, :]
    else:
        sim_vec = (filtration or (lambda nodes: attention_filtration(sim.SAF_module, nodes)))(sim_emb)
    return torch.sigmoid(sim.sim_eval_w(sim_vec))


@torch.no_grad()
def reference_scores(model, feats: torch.Tensor, captions: list[list[int]]) -> torch.Tensor:
    """Scores (n_images, n_captions) of ``model`` (eval semantics) computed caption by caption."""
    img_emb = encode_image(model, feats)
    img_glo = visual_sa(model.sim_enc.v_global_w, img_emb)
    return torch.cat([caption_column(model, img_emb, img_glo, encode_caption(model, ids)) for ids in captions], 1)
