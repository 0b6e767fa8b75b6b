"""Trained models ready to score: one checkpoint or an ensemble of several with the vocabulary their captions
use, and the token ids of captions for a model. What evaluation, search, explanations, encoding and the demo
load through (none of them needs ``itmatch.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from itmatch.checkpoint import load_checkpoint
from itmatch.data.tokenize import tokenize
from itmatch.data.vocab import Vocabulary, load_vocab, vocab_from_json
from itmatch.errors import ItmatchError
from itmatch.models.base import Matcher
from itmatch.models.ensemble import Ensemble


def load_models(checkpoints: Sequence[str | Path], vocab_path: str | Path | None, *, trust: bool = False,
                device: str = "cpu") -> tuple[Matcher, Vocabulary | None]:
    """The model of one checkpoint, or the ensemble of several, and the vocabulary their captions use.

    The vocabulary comes from ``vocab_path`` or else from the first checkpoint that stores one; its size
    must equal every model's word embedding (a model trained with another vocabulary is an error). Models with
    their own tokenizer (``config.vocab_size`` None, e.g. a BERT-family text encoder) need no vocabulary.
    """
    loaded = [load_checkpoint(p, trust=trust, device=device) for p in checkpoints]
    if vocab_path is not None:
        vocab = load_vocab(vocab_path)
    else:  # the first checkpoint that stores one
        source, stored = next(((path, item.vocab) for path, item in zip(checkpoints, loaded)
                               if item.vocab is not None), (None, None))
        vocab = vocab_from_json(stored, source) if stored is not None else None
    for path, item in zip(checkpoints, loaded):
        size = item.model.vocab_size
        if size is None:
            continue
        if vocab is None:
            raise ItmatchError(f"{path}: this model reads word ids; give its vocabulary with --vocab VOCAB.json")
        if len(vocab) != size:
            fix = ("an ensemble's models must share the vocabulary they were trained with" if len(checkpoints) > 1
                   else "use the vocabulary the model was trained with")
            where = vocab_path if vocab_path is not None else f"the vocabulary stored in {source}"
            raise ItmatchError(f"{path}: trained with {size} words, but {where} has {len(vocab)}; {fix}")
    models = [item.model for item in loaded]
    return (models[0] if len(models) == 1 else Ensemble(models)), vocab


def caption_tokens(model: Matcher, vocab: Vocabulary | None, captions: list[str]) -> list[list[int]]:
    """Token ids of ``captions`` for ``model``: its own tokenizer when it has one (``model.tokenize``, e.g. a
    BERT-family text encoder), else the vocabulary's word ids."""
    if model.tokenize is not None:
        return model.tokenize(captions)
    if vocab is None:
        raise ItmatchError("this model needs a vocabulary to read captions; pass --vocab VOCAB.json")
    return vocab.encode_all(captions)


def knows_a_word(model: Matcher, vocab: Vocabulary | None, texts: Iterable[str]) -> bool:
    """Whether the model reads a word of ``texts`` as itself, not as the unknown word: some word is in its
    vocabulary, or it has a tokenizer of its own (which reads any text)."""
    return model.tokenize is not None or vocab is None or any(word in vocab for text in texts
                                                              for word in tokenize(text))


def check_known_words(model: Matcher, vocab: Vocabulary | None, text: str) -> None:
    """Refuse a query none of whose words the model's vocabulary holds: its every word would be read as the
    unknown word, and the results would look ranked while meaning nothing."""
    if not knows_a_word(model, vocab, [text]):
        raise ItmatchError(f"none of the words of {text.strip()!r} is in the model's vocabulary ({len(vocab)} "
                           "words); try other words")
