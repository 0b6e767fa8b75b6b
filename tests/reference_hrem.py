"""A literal reference of the HREM release's instance-level graph (CrossmodalGroup/HREM ``lib/mca.py``:
``AdjacencyModel.forward`` with its ``AdjacencyLearning``), rewritten step by step in the release's order: a loop
over captions, each repeated over the batch's images, word–region products, SCAN's rectifier and normalisations,
per-word / per-region maxima, means and top-K, the MLPs with the mean added, thresholds by subtraction, and the
KL regulariser at temperature 1.

``same_modality`` picks the lines that rank the image–image and text–text blocks of the connection matrix:
"cross" as first published (2023-06-13: ``img·capᵀ`` for images, ``cap·imgᵀ`` for captions), "within" as
corrected on 2023-10-25 (commit fb854a9: ``img·imgᵀ``, ``cap·capᵀ``).

Like the release it ignores ``img_len`` (every region counts) and, for captions shorter than K words, takes
padding positions into the word top-K: feed it full images and captions of at least K words to compare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _word_region_statistics(img_regions, cap_words, cap_len, topk):
    t2i_topk, t2i_mean, i2t_topk, i2t_mean = [], [], [], []
    n_image = img_regions.size(0)
    img_regions = F.normalize(img_regions, dim=-1)
    for i in range(cap_words.size(0)):
        n_words = int(cap_len[i])
        selected = max(n_words, topk)
        words = F.normalize(cap_words[i, :selected, :].repeat(n_image, 1, 1), dim=-1)
        sim = F.leaky_relu(torch.bmm(words, img_regions.transpose(1, 2)), negative_slope=0.1)
        per_word = F.normalize(sim, dim=1).max(dim=2)[0]                     # (images, words)
        t2i_mean.append(per_word[:, :n_words].mean(dim=1))
        t2i_topk.append(per_word.topk(k=topk, dim=1, largest=True)[0])
        per_region = F.normalize(sim, dim=2)[:, :n_words, :].max(dim=1)[0]  # (images, regions)
        i2t_mean.append(per_region.mean(dim=1))
        i2t_topk.append(per_region.topk(k=topk, dim=1, largest=True)[0])
    return (torch.stack(t2i_topk, 0), torch.stack(t2i_mean, 0),
            torch.stack(i2t_topk, 0).transpose(0, 1), torch.stack(i2t_mean, 0).transpose(0, 1))


def _kl(target, logits):
    return F.kl_div(F.log_softmax(target, dim=-1), F.softmax(logits, dim=-1), reduction="batchmean")


def _threshold(scores, n, fraction):
    return (scores - scores.topk(k=int(n * fraction), dim=1, largest=True)[0][:, -1:]) >= 0


def release_graph(img_emb, cap_emb, img_regions, cap_words, cap_len, mlp_t2i, mlp_i2t, *, threshold=0.5,
                  topk=10, sigma=1.0, same_modality="cross"):
    """The release's ``(connect, relation, reg_loss)``, assembled into (2B, 2B) blocks images first."""
    n_img, n_cap = img_emb.size(0), cap_emb.size(0)
    with torch.no_grad():
        if same_modality == "cross":
            sim_t2t = torch.matmul(cap_emb, img_emb.t())
            sim_i2i = torch.matmul(img_emb, cap_emb.t())
        else:
            sim_t2t = torch.matmul(cap_emb, cap_emb.t())
            sim_i2i = torch.matmul(img_emb, img_emb.t())
        t2t_connect = _threshold(sim_t2t, n_cap, threshold)
        i2i_connect = _threshold(sim_i2i, n_img, threshold)
    i2i_relation = torch.exp(-torch.cdist(img_emb, img_emb) / sigma)
    t2t_relation = torch.exp(-torch.cdist(cap_emb, cap_emb) / sigma)
    t2i_topk, t2i_mean, i2t_topk, i2t_mean = _word_region_statistics(img_regions.detach(), cap_words.detach(),
                                                                     cap_len, topk)
    t2i_relation = mlp_t2i(t2i_topk).squeeze(-1) + t2i_mean
    i2t_relation = mlp_i2t(i2t_topk).squeeze(-1) + i2t_mean
    t2i_connect = _threshold(t2i_mean, n_img, threshold)
    i2t_connect = _threshold(i2t_mean, n_cap, threshold)
    guide = torch.exp(-torch.cdist(img_emb, cap_emb) / sigma).detach()
    reg_loss = _kl(guide, i2t_relation) + _kl(guide.t(), t2i_relation)
    connect = torch.cat((torch.cat((i2i_connect, i2t_connect), 1), torch.cat((t2i_connect, t2t_connect), 1)), 0)
    relation = torch.cat((torch.cat((i2i_relation, i2t_relation), 1),
                          torch.cat((t2i_relation, t2t_relation), 1)), 0)
    return connect, relation, reg_loss
