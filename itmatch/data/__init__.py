"""Data: caption tokenization, vocabularies, the SCAN precomp format and planted synthetic data."""

from itmatch.data.precomp import SPLITS, PrecompSplit, load_split, read_captions, write_split
from itmatch.data.synthetic import write_synthetic
from itmatch.data.tokenize import tokenize
from itmatch.data.vocab import Vocabulary, build_vocab, load_vocab, save_vocab

__all__ = [
    "SPLITS",
    "PrecompSplit",
    "Vocabulary",
    "build_vocab",
    "load_split",
    "load_vocab",
    "read_captions",
    "save_vocab",
    "tokenize",
    "write_split",
    "write_synthetic",
]
