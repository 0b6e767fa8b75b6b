"""The caption tokenizer must give the tokens of the authors' ``nltk.word_tokenize(caption.lower())``."""

from __future__ import annotations

import nltk
import pytest

from itmatch.data.tokenize import ABBREVIATIONS, split_sentences, tokenize

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


# Tricky captions: the tokens of NLTK 3.4.5's word_tokenize(caption.lower()) (SGRAF's pinned version, run with
# Python 2's regex semantics and punkt's English model), where the current NLTKWordTokenizer and an untrained punkt
# differ: a quote before a word, runs of dots, punkt's abbreviations, numbers and initials before a period.
NLTK_3_4_5_CASES = [
    ("A man said 'hello' to the dog.", ["a", "man", "said", "'hello", "'", "to", "the", "dog", "."]),
    ("A 'no smoking' sign and a 'stop' sign.",
     ["a", "'no", "smoking", "'", "sign", "and", "a", "'stop", "'", "sign", "."]),
    ("A rock 'n' roll band plays.", ["a", "rock", "'", "n", "'", "roll", "band", "plays", "."]),
    ("The year '99 was good.", ["the", "year", "'99", "was", "good", "."]),
    ("The '80s car, a mor'n fun 'a' grade.",
     ["the", "'80s", "car", ",", "a", "mor", "'", "n", "fun", "'", "a", "'", "grade", "."]),
    ('A "happy" child says ""hi"" to a ``friend\'\'.',
     ["a", "``", "happy", "''", "child", "says", "``", "''", "hi", "''", "''", "to", "a", "``", "friend", "''", "."]),
    ("A ‘curly’ and “double” quote, «guillemets» too.",
     ["a", "‘", "curly", "’", "and", "“", "double", "”", "quote", ",", "«", "guillemets", "»", "too", "."]),
    ("Wow.. what a view.", ["wow..", "what", "a", "view", "."]),
    ("A field.. with trees.. and a street..", ["a", "field..", "with", "trees..", "and", "a", "street.."]),
    ("A view....", ["a", "view", "...", "."]),
    ("A dog runs... and jumps.", ["a", "dog", "runs", "...", "and", "jumps", "."]),
    ("A man. . . walks.", ["a", "man", ".", ".", ".", "walks", "."]),
    ("A man at 5 ft. tall on 5th Ave. near Co. trucks.",
     ["a", "man", "at", "5", "ft.", "tall", "on", "5th", "ave.", "near", "co.", "trucks", "."]),
    ("A sign for Jan. sales on Main St. by Mr. Smith.",
     ["a", "sign", "for", "jan.", "sales", "on", "main", "st.", "by", "mr.", "smith", "."]),
    ("A shop on Main St.", ["a", "shop", "on", "main", "st", "."]),
    ("U.S.A. flags on the street.", ["u.s.a.", "flags", "on", "the", "street", "."]),
    ("A man e.g. a tall one, i.e. a giant, at 5 a.m. today.",
     ["a", "man", "e.g", ".", "a", "tall", "one", ",", "i.e", ".", "a", "giant", ",", "at", "5", "a.m.", "today",
      "."]),
    ("J. Smith and B. Smith walk by.", ["j.", "smith", "and", "b.", "smith", "walk", "by", "."]),
    ("There are 3. dogs and 2. cats.", ["there", "are", "3.", "dogs", "and", "2.", "cats", "."]),
    ("A man at 5. Administrators watch.", ["a", "man", "at", "5", ".", "administrators", "watch", "."]),
    ("The dog's ball isn't red; they can't, won't, and I'd say they've gone.",
     ["the", "dog", "'s", "ball", "is", "n't", "red", ";", "they", "ca", "n't", ",", "wo", "n't", ",", "and", "i",
      "'d", "say", "they", "'ve", "gone", "."]),
    ("Cannot stop, gonna go, wanna see, gimme that, 'tis fine.",
     ["can", "not", "stop", ",", "gon", "na", "go", ",", "wan", "na", "see", ",", "gim", "me", "that", ",", "'t",
      "is", "fine", "."]),
    ("A D'ye gotta lemme?", ["a", "d", "'ye", "got", "ta", "lem", "me", "?"]),
    ("A white-walled room -- a 2-1 score, a tug-of-war.",
     ["a", "white-walled", "room", "--", "a", "2-1", "score", ",", "a", "tug-of-war", "."]),
    ("A man pays $1,000 (or 3.5%) at 3:30 & leaves @ home #1.",
     ["a", "man", "pays", "$", "1,000", "(", "or", "3.5", "%", ")", "at", "3:30", "&", "leaves", "@", "home", "#",
      "1", "."]),
    ("A café's naïve ÉCOLE sign on the straße.",  # Python 2 kept "École": see the module docstring
     ["a", "café", "'s", "naïve", "école", "sign", "on", "the", "straße", "."]),
    ("A dog\u2009sits , the cat\xa0.", ["a", "dog", "sits", ",", "the", "cat", "."]),
    ("A dog. A cat! Birds? Yes.", ["a", "dog", ".", "a", "cat", "!", "birds", "?", "yes", "."]),
    ("(A dog.) A cat.", ["(", "a", "dog", ".", ")", "a", "cat", "."]),
    ("Is it a dog?! No.", ["is", "it", "a", "dog", "?", "!", "no", "."]),
    ("Two dogs... A cat.", ["two", "dogs", "...", "a", "cat", "."]),
    ("A “dog.” A cat.", ["a", "“", "dog.", "”", "a", "cat", "."]),  # no sentence end before a curly quote
]  # fmt: skip


@pytest.mark.parametrize(("caption", "expected"), NLTK_3_4_5_CASES)
def test_tokenize_matches_nltk_3_4_5(caption: str, expected: list[str]) -> None:
    assert tokenize(caption) == expected


def test_punkt_english_abbreviations() -> None:
    # punkt's English model: 155 abbreviations (its entry ". . " can never match a token); e.g./i.e. are not among them
    assert len(ABBREVIATIONS) == 155
    assert {"ave", "co", "ft", "jan", "mr", "st", "u.s.a", "a.m"} <= ABBREVIATIONS
    assert not {"e.g", "i.e"} & ABBREVIATIONS


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
        ("5th ave. near co. trucks. jan. sales", ["5th ave. near co. trucks.", "jan. sales"]),  # punkt's abbreviations
        ("e.g. a dog", ["e.g.", "a dog"]),  # not one of punkt's abbreviations
        ("at 5. administrators. at 5. dogs", ["at 5.", "administrators.", "at 5. dogs"]),  # after a number
        ("a “dog.” a cat", ["a “dog.” a cat"]),  # 3.4.5's punkt sees no sentence end before a curly quote
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_empty_and_whitespace() -> None:
    assert tokenize("") == []
    assert tokenize("  dog  ") == ["dog"]
    # Stripped like the authors' caption lines: a leading blank would make the opening quote '' instead of ``.
    assert tokenize('\t "A dog." \r\n') == ["``", "a", "dog", ".", "''"]


def test_a_no_break_space_is_not_a_blank_to_punkt() -> None:
    """3.4.5 compiled the pattern that keeps closing quotes with their sentence without re.UNICODE (Python 2):
    a no-break space after ``."`` does not end the sentence there, so the quote opens the next token run."""
    assert tokenize('"A dog."\xa0A cat.') == ["``", "a", "dog", ".", "``", "a", "cat", "."]


def test_sentence_ends_are_found_as_3_4_5_searched_them_in_one_pass() -> None:
    """The one-pass search of candidate sentence ends gives 3.4.5's own search's sentences on random caption-like
    text, and a long run of non-blank characters, which that search rescans from every position (quadratic), is
    split at once."""
    import importlib
    import random
    import re
    import time

    module = importlib.import_module("itmatch.data.tokenize")
    pattern = re.compile(r"\S*[.?!](?=(?P<after_tok>%s|\s+(?P<next_tok>\S+)))"
                         % module._LanguageVars._re_non_word_chars)

    class Literal(module._SentenceSplitter):
        def _slices_from_text(self, text):
            start = 0
            for match in pattern.finditer(text):
                if self.text_contains_sentbreak(match.group() + match.group("after_tok")):
                    yield slice(start, match.end())
                    start = match.start("next_tok") if match.group("next_tok") else match.end()
            yield slice(start, len(text.rstrip()))

    fast = module._sentence_splitter()
    literal = Literal(fast._params, lang_vars=module._LanguageVars(), token_cls=module._Token)
    rng = random.Random(0)
    pieces = [*"ab. .?!)\"'(;:-,j3 \xa0\t", "dr. ", "st. ", "... ", "..", " a.", "3. ", "u.s. "]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    assert [fast.tokenize(t) for t in texts] == [literal.tokenize(t) for t in texts]
    started = time.perf_counter()
    assert tokenize("a" * 100_000 + " b.") == ["a" * 100_000, "b", "."]  # a run with no sentence end in it
    assert time.perf_counter() - started < 1.0  # the literal search takes minutes
