"""Word vocabularies in the SCAN/SGRAF authors' JSON layout (``f30k_precomp_vocab.json``, ``coco_precomp_vocab.json``).

The file is ``{"word2idx": {word: id}, "idx2word": {"id": word}, "idx": next_id}`` (JSON keys are strings, so
``idx2word``'s keys are the ids written as strings). Ids 0-3 are the special tokens ``<pad>``, ``<start>``, ``<end>``,
``<unk>``; a caption becomes ``[<start>] + tokens + [<end>]`` with unknown words mapped to ``<unk>``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from itmatch.data.tokenize import tokenize
from itmatch.errors import ItmatchError
from itmatch.fileio import write_json

PAD, START, END, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")


class Vocabulary:
    """A word <-> id mapping; ``vocab(word)`` gives the id of ``word`` or of ``<unk>``."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        """Start with the four special tokens at ids 0-3, then add ``words`` in order."""
        self.word2idx: dict[str, int] = {}
        self.idx2word: dict[int, str] = {}
        for word in (*SPECIAL_TOKENS, *words):
            self.add_word(word)

    def add_word(self, word: str) -> int:
        """Give ``word`` the next free id unless it has one; return its id."""
        if word not in self.word2idx:
            index = len(self.word2idx)
            self.word2idx[word] = index
            self.idx2word[index] = word
        return self.word2idx[word]

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, UNK)

    def __len__(self) -> int:
        return len(self.word2idx)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.word2idx == other.word2idx

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def encode(self, caption: str) -> list[int]:
        """Token ids of ``caption``: ``[<start>] + ids of tokenize(caption) + [<end>]`` (the authors' rule)."""
        return [START, *(self(token) for token in tokenize(caption)), END]

    def encode_all(self, captions: Iterable[str]) -> list[list[int]]:
        """``encode`` each caption; the lists have different lengths (pad them when batching)."""
        return [self.encode(caption) for caption in captions]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of ``ids`` (for display and debugging)."""
        return [self.idx2word[int(i)] for i in ids]

    def to_json(self) -> dict[str, Any]:
        """The authors' JSON layout: ``word2idx``, ``idx2word`` with string keys, ``idx``."""
        return {
            "word2idx": dict(self.word2idx),
            "idx2word": {str(i): w for i, w in self.idx2word.items()},
            "idx": len(self),
        }


def build_vocab(captions: Iterable[str], threshold: int = 4) -> Vocabulary:
    """The vocabulary of ``captions``: the special tokens, then every token seen at least ``threshold`` times.

    The authors' ``vocab.py`` uses the same rule (threshold 4) but adds the words in the order Python's dict met
    them, so its ids depend on the caption order; here words are ordered by descending count, then alphabetically,
    so the same counts always give the same ids. Use the authors' JSON files to run their checkpoints.
    """
    if threshold < 1:
        raise ItmatchError(f"vocabulary threshold must be >= 1, got {threshold}")
    counts = Counter(token for caption in captions for token in tokenize(caption))
    kept = sorted((word for word, n in counts.items() if n >= threshold), key=lambda w: (-counts[w], w))
    return Vocabulary(kept)


def save_vocab(vocab: Vocabulary, path: str | os.PathLike) -> None:
    """Write ``vocab`` to ``path`` in the authors' JSON layout (atomically)."""
    write_json(path, vocab.to_json())


def load_vocab(path: str | os.PathLike) -> Vocabulary:
    """Read a vocabulary JSON file (the authors' layout); a malformed file raises ``ItmatchError`` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ItmatchError(f"{path}: vocabulary file not found; build one with `itmatch data vocab`") from None
    except IsADirectoryError:
        raise ItmatchError(f"{path}: is a folder; give the vocabulary's JSON file (e.g. {path / 'vocab.json'})"
                           ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ItmatchError(f"{path}: not a JSON vocabulary file ({exc}); build one with `itmatch data vocab`") from None
    return vocab_from_json(data, path)


def vocab_from_json(data: Any, path: str | os.PathLike) -> Vocabulary:
    """Check the authors' layout and build the vocabulary from ``word2idx`` (``idx2word`` must agree with it)."""
    fix = "expected the authors' layout (keys word2idx, idx2word, idx); rebuild it with `itmatch data vocab`"
    if not isinstance(data, dict) or not {"word2idx", "idx2word", "idx"} <= data.keys():
        raise ItmatchError(f"{path}: missing keys; {fix}")
    word2idx, idx2word = data["word2idx"], data["idx2word"]
    if not isinstance(word2idx, dict) or not all(isinstance(i, int) for i in word2idx.values()):
        raise ItmatchError(f"{path}: word2idx must map words to integer ids; {fix}")
    by_id = sorted(word2idx.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))) or data["idx"] != len(by_id):
        raise ItmatchError(f"{path}: ids must be 0..{len(by_id) - 1} without gaps and idx must be {len(by_id)}; {fix}")
    if tuple(w for w, _ in by_id[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ItmatchError(f"{path}: ids 0-3 must be {', '.join(SPECIAL_TOKENS)}; {fix}")
    if idx2word != {str(i): w for w, i in by_id}:
        raise ItmatchError(f"{path}: idx2word does not mirror word2idx; {fix}")
    return Vocabulary(w for w, _ in by_id[len(SPECIAL_TOKENS):])
