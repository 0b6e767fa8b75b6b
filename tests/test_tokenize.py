"""The caption tokenizer must give the tokens of the authors' ``nltk.word_tokenize(caption.lower())``."""

from __future__ import annotations

import nltk
import pytest

from itmatch.data.tokenize import split_sentences, tokenize

# (caption, the tokens nltk.word_tokenize(caption.lower()) gives with the punkt model), written out by hand.
CASES = [
    (
        "Two young guys with shaggy hair look at their hands while hanging out in the yard .",
        ["two", "young", "guys", "with", "shaggy", "hair", "look", "at", "their", "hands", "while", "hanging", "out",
         "in", "the", "yard", "."],
    ),
    (
        "A man in a white-walled room isn't smiling; the dog's ball is 3.5 inches wide and costs $1,000.",
        ["a", "man", "in", "a", "white-walled", "room", "is", "n't", "smiling", ";", "the", "dog", "'s", "ball", "is",
         "3.5", "inches", "wide", "and", "costs", "$", "1,000", "."],
    ),
    (
        'A "happy" child runs!  Another child watches? They can\'t stop.',
        ["a", "``", "happy", "''", "child", "runs", "!", "another", "child", "watches", "?", "they", "ca", "n't",
         "stop", "."],
    ),
    (
        "People (mostly kids) play in the 1990s-style park; it's fun!",
        ["people", "(", "mostly", "kids", ")", "play", "in", "the", "1990s-style", "park", ";", "it", "'s", "fun", "!"],
    ),
    (
        "The women's team won 2-1 ... really.",
        ["the", "women", "'s", "team", "won", "2-1", "...", "really", "."],
    ),
    (
        "I'm here, we'll see, they're gonna go.",
        ["i", "'m", "here", ",", "we", "'ll", "see", ",", "they", "'re", "gon", "na", "go", "."],
    ),
    (
        "A DOG. A Cat.",
        ["a", "dog", ".", "a", "cat", "."],
    ),
    (
        "Mr. Smith stands near St. Mark's church.",
        ["mr.", "smith", "stands", "near", "st.", "mark", "'s", "church", "."],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("caption", "expected"), CASES)
def test_tokenize_matches_word_tokenize(caption: str, expected: list[str]) -> None:
    assert tokenize(caption) == expected


@pytest.mark.parametrize(("caption", "expected"), CASES)
def test_equals_nltk_word_tokenizer_per_sentence(caption: str, expected: list[str]) -> None:
    # word_tokenize without punkt (preserve_line=True) on each sentence is what word_tokenize does after punkt.
    sentences = split_sentences(caption.lower())
    assert [t for s in sentences for t in nltk.word_tokenize(s, preserve_line=True)] == expected


def test_sentence_split_decides_where_a_period_is_a_token() -> None:
    # Without the sentence split the inner period would stick to "man".
    assert nltk.word_tokenize("a man. a dog.", preserve_line=True) == ["a", "man.", "a", "dog", "."]
    assert tokenize("a man. a dog.") == ["a", "man", ".", "a", "dog", "."]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("a man. a dog! the cat? yes", ["a man.", "a dog!", "the cat?", "yes"]),
        ("he paid 3.5 dollars. 1,000 people", ["he paid 3.5 dollars.", "1,000 people"]),
        ("there are 3. dogs", ["there are 3. dogs"]),  # a number before the period: no break
        ("j. doe walks... slowly.", ["j. doe walks... slowly."]),  # an initial, an ellipsis
        ("mr. smith at 5 p.m. today", ["mr. smith at 5 p.m. today"]),  # listed abbreviations
        ('"hello." she said.', ['"hello."', "she said."]),  # closing quote stays with its sentence
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_empty_and_whitespace() -> None:
    assert tokenize("") == []
    assert tokenize("  dog  ") == ["dog"]
