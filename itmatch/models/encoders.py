"""Region and word encoders of SCAN-style models (SGR, SAF, TSHSR): a linear map of detector features, and
a (bi-directional) GRU over word embeddings. State-dict names follow the SGRAF release (`fc`, `embed`, `cap_rnn`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmatch.models.layers import l2norm, xavier_init_


class RegionEncoder(nn.Module):
    """Regions (B, R, img_dim) -> (B, R, embed_size), L2-normalised when ``normalize``."""

    def __init__(self, img_dim: int, embed_size: int, normalize: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        self.normalize = normalize
        xavier_init_(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        emb = self.fc(features)
        return l2norm(emb) if self.normalize else emb


class GRUTextEncoder(nn.Module):
    """Word ids (B, L) + lengths (B,) -> word features (B, L_max, embed_size), zero past each length.

    Embedding (uniform ±0.1 init) -> dropout -> GRU; a bi-directional GRU's two directions are averaged
    (the SGRAF release), then each word vector is L2-normalised.
    """

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.4, normalize: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.dropout = nn.Dropout(dropout)
        self.cap_rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.normalize = normalize
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.cap_rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        if self.bidirectional:
            half = out.shape[2] // 2
            out = (out[:, :, :half] + out[:, :, half:]) / 2
        return l2norm(out) if self.normalize else out
