"""A literal reference of one SGRAF training step, one caption at a time, as the authors' train.py runs it.

It uses an itmatch ``SGRAF`` model's modules but follows the released code's order: encode the batch's images
and captions, then for every caption repeat it over the images, self-attend (dropout per caption), attend over
regions, build the similarity graph and run SGR or SAF — SAF's ``BatchNorm1d(1)`` called as a module on that one
caption's (images, 1, words + 1) logits, so its running statistics advance once per caption — then the
``ContrastiveLoss`` with ``max_violation``, backward, gradient clipping and the optimizer step. It is the oracle
of the batched training step (tests) and its baseline (benchmarks/train_step.py).
"""

from __future__ import annotations

import torch
from reference_sgraf import _l1, _l2, caption_column
from torch.nn.utils import clip_grad_norm_
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def encode_captions(model, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The authors' ``EncoderText``: embed, dropout, packed (BiGRU), mean of the directions, l2norm."""
    enc = model.txt_enc
    emb = enc.dropout(enc.embed(tokens))
    packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True)
    out, _ = enc.cap_rnn(packed)
    cap_emb, _ = pad_packed_sequence(out, batch_first=True)
    if enc.bidirectional:
        half = cap_emb.size(2) // 2
        cap_emb = (cap_emb[:, :, :half] + cap_emb[:, :, half:]) / 2
    return _l2(cap_emb) if model.config.txt_norm else cap_emb


def self_attention(sa, local: torch.Tensor, raw_global: torch.Tensor) -> torch.Tensor:
    """The authors' ``VisualSA``/``TextSA`` forward (their Sequentials called as modules: BN and dropout live)."""
    l_emb = sa.embedding_local(local)
    g_emb = sa.embedding_global(raw_global)
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(sa.embedding_common(l_emb.mul(g_emb)).squeeze(2), dim=1)
    return _l2((weights.unsqueeze(2) * local).sum(dim=1))


def attention_filtration(saf, sim_emb: torch.Tensor) -> torch.Tensor:
    """The authors' ``AttentionFiltration.forward``: ``self.bn`` sees this caption's logits only."""
    sim_attn = _l1(torch.sigmoid(saf.bn(saf.attn_sim_w(sim_emb).permute(0, 2, 1))), dim=-1)
    return _l2(torch.matmul(sim_attn, sim_emb).squeeze(1), dim=-1)


def forward_sim(model, img_emb: torch.Tensor, cap_emb: torch.Tensor, cap_lens: list[int]) -> torch.Tensor:
    """The authors' ``EncoderSimilarity.forward``: scores (n_image, n_caption), one caption per iteration."""
    sim = model.sim_enc
    img_glo = self_attention(sim.v_global_w, img_emb, torch.mean(img_emb, 1))
    sim_all = []
    for i, n_word in enumerate(cap_lens):
        sim_all.append(caption_column(
            model, img_emb, img_glo, cap_emb[i, :n_word, :].unsqueeze(0),
            text_global=lambda cap: self_attention(sim.t_global_w, cap, torch.mean(cap, 1)),
            filtration=lambda nodes: attention_filtration(sim.SAF_module, nodes)))
    return torch.cat(sim_all, 1)


def contrastive_loss(scores: torch.Tensor, margin: float = 0.2, max_violation: bool = True) -> torch.Tensor:
    """The authors' ``ContrastiveLoss``."""
    diagonal = scores.diag().view(scores.size(0), 1)
    d1 = diagonal.expand_as(scores)
    d2 = diagonal.t().expand_as(scores)
    cost_s = (margin + scores - d1).clamp(min=0)
    cost_im = (margin + scores - d2).clamp(min=0)
    mask = torch.eye(scores.size(0), device=scores.device) > 0.5
    cost_s = cost_s.masked_fill_(mask, 0)
    cost_im = cost_im.masked_fill_(mask, 0)
    if max_violation:
        cost_s = cost_s.max(1)[0]
        cost_im = cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


def reference_loss(model, features: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                   margin: float = 0.2, max_violation: bool = True) -> torch.Tensor:
    """Loss of a batch sorted by caption length (longest first), image i paired with caption i."""
    img_emb = model.img_enc(features)
    cap_emb = encode_captions(model, tokens, lengths)
    scores = forward_sim(model, img_emb, cap_emb, [int(n) for n in lengths])
    return contrastive_loss(scores, margin, max_violation)


def reference_step(model, optimizer: torch.optim.Optimizer, features: torch.Tensor, tokens: torch.Tensor,
                   lengths: torch.Tensor, grad_clip: float = 2.0, margin: float = 0.2) -> float:
    """The authors' ``train_emb``: forward, zero_grad, loss, backward, clip, step. Returns the loss."""
    loss = reference_loss(model, features, tokens, lengths, margin)
    optimizer.zero_grad()
    loss.backward()
    if grad_clip > 0:
        clip_grad_norm_(list(model.parameters()), grad_clip)
    optimizer.step()
    return float(loss.detach())
