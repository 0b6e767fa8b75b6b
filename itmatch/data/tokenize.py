"""Caption tokenization identical to the SCAN/SGRAF authors' ``nltk.word_tokenize(caption.lower())``, offline.

``word_tokenize`` splits a text into sentences with NLTK's punkt model, then applies ``NLTKWordTokenizer`` to each
sentence. The punkt model is data that must be downloaded, so it cannot be used here. Instead the sentence splitter
is punkt's own algorithm (``PunktSentenceTokenizer``) with untrained parameters plus a few common abbreviations:
on lower-cased text it breaks after ``.``/``!``/``?`` followed by a space, but not after an ellipsis, an initial
(``j. smith``), a number (``3. dogs``) or a listed abbreviation (``mr.``). The split matters only for where a period
becomes its own token (``NLTKWordTokenizer`` separates a period only at the end of its input), which is exactly what
the authors' vocabularies reflect.
"""

from __future__ import annotations

import functools

from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

#: Abbreviations after which a period does not end a sentence (punkt's trained English model knows more; these are
#: the ones likely in image captions).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "vs", "e.g", "i.e", "a.m", "p.m", "u.s"})


@functools.cache
def _sentence_splitter() -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


@functools.cache
def _word_tokenizer() -> NLTKWordTokenizer:
    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences the way punkt does on lower-cased captions (see the module docstring)."""
    return _sentence_splitter().tokenize(text)


def tokenize(sentence: str) -> list[str]:
    """Lower-case ``sentence`` and split it into word tokens exactly like ``nltk.word_tokenize(sentence.lower())``.

    Example: ``"The dog's ball isn't red."`` -> ``['the', 'dog', "'s", 'ball', 'is', "n't", 'red', '.']``.
    """
    words = _word_tokenizer()
    return [token for part in split_sentences(sentence.lower()) for token in words.tokenize(part)]
