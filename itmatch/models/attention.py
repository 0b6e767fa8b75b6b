"""Attention blocks of the SGRAF family: self-attention global vectors and text-to-visual cross-attention.

Module and parameter names follow the SGRAF release so the authors' state dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from itmatch.models.layers import l2norm, xavier_init_


class VisualSelfAttention(nn.Module):
    """Global image vector (B, d) from regions (B, R, d): the region mean guides a softmax over regions.

    Both branches are Linear -> BatchNorm -> tanh -> dropout; the BatchNorm of the local branch runs over
    the R region slots (``BatchNorm1d(R)``), exactly as released, so R is fixed by the model.
    """

    def __init__(self, embed_dim: int, dropout: float, num_regions: int) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(num_regions),
                                             nn.Tanh(), nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(embed_dim),
                                              nn.Tanh(), nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        xavier_init_(self)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        local = self.embedding_local(regions)
        glob = self.embedding_global(regions.mean(1))
        weights = torch.softmax(self.embedding_common(local * glob[:, None]).squeeze(2), dim=1)
        return l2norm((weights[:, :, None] * regions).sum(1))


class TextSelfAttention(nn.Module):
    """Global text vector (B, d) from zero-padded words (B, L, d) and lengths (B,); padding is masked out.

    Branches are Linear -> tanh -> dropout (no BatchNorm on the text side, as released).
    """

    def __init__(self, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        xavier_init_(self)

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(words.shape[1], device=words.device) < lengths[:, None]
        mean = words.sum(1) / lengths[:, None].to(words.dtype)
        local = self.embedding_local(words)
        glob = self.embedding_global(mean)
        logits = self.embedding_common(local * glob[:, None]).squeeze(2).masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return l2norm((weights[:, :, None] * words).sum(1))


def attended_regions(regions: torch.Tensor, words: torch.Tensor, smooth: float,
                     eps: float = 1e-8) -> torch.Tensor:
    """Text-to-visual attention for every image × caption pair: each word attends over each image's regions.

    regions (I, R, d), words (C, L, d) zero-padded -> attended region vectors (I, C, L, d), L2-normalised.
    As released: a = LeakyReLU_0.1(region · word), L2-normalised across the caption's words (padding words
    are zero and add nothing), softmax over regions at temperature ``smooth``. The L2 norm of the attended
    vector comes from the regions' Gram matrix (||w·R||² = wᵀ(RRᵀ)w), so it is applied to the small
    weight matrix rather than to the d-dimensional result: the same value with one pass less over it.
    """
    n_img, n_reg, dim = regions.shape
    n_cap, n_word, _ = words.shape
    scores = torch.nn.functional.leaky_relu(regions.reshape(-1, dim) @ words.reshape(-1, dim).T, 0.1)
    scores = scores.view(n_img, n_reg, n_cap, n_word)
    scores = scores / (scores.square().sum(3, keepdim=True).sqrt() + eps)
    weights = torch.softmax(scores.permute(0, 2, 3, 1) * smooth, dim=3).reshape(n_img, n_cap * n_word, n_reg)
    gram = regions @ regions.transpose(1, 2)
    norm = ((weights @ gram) * weights).sum(2, keepdim=True).clamp_min(0).sqrt()
    context = torch.bmm(weights / (norm + eps), regions)
    return context.view(n_img, n_cap, n_word, dim)
