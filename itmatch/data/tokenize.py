"""Caption tokenization as the SCAN/SGRAF authors ran it: ``nltk.word_tokenize(caption.lower())`` under NLTK 3.4.5
(SGRAF's pinned version) on Python 2, offline.

``word_tokenize`` first splits the text into sentences with punkt's trained English model, then runs NLTK 3.4.5's
Treebank word rules on each sentence. Both halves are reproduced here without downloading anything:

- Sentences: punkt's algorithm (NLTK's ``PunktSentenceTokenizer``) with the English model's parameters that can
  matter on lower-cased text, embedded below, and with the details later NLTK changed put back as 3.4.5 had them
  (which characters end a punkt word or stay with the sentence before a break, how candidate sentence ends are
  found, the standard ``re`` engine). The split decides whether an inner period is its own token: the word rules
  separate a period only at the very end of a sentence.
- Words: 3.4.5's rules, in 3.4.5's order (``_WORD_RULES``). The current ``NLTKWordTokenizer`` has since changed
  them: it splits ``'no`` into ``'`` + ``no`` and ``wow..`` into ``wow`` + ``..``, where 3.4.5 keeps both whole.
  As on Python 2, where these patterns were compiled without ``re.UNICODE``, ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are
  ASCII-only except in the four rules that word_tokenize added for curly quotes and guillemets.

Checked token for token against NLTK 3.4.5 itself (see docs/data.md). One departure from Python 2: ``str.lower()``
of a Python 2 byte string lower-cases ASCII letters only, so the authors' pipeline kept ``École`` capitalised; here
the caption is lower-cased fully (``école``). The released Flickr30K and MS-COCO vocabularies hold no non-ASCII
word, so their token ids are the same either way.
"""

from __future__ import annotations

import functools
import re

from nltk.tokenize.punkt import PunktLanguageVars, PunktParameters, PunktSentenceTokenizer, PunktToken

# --- punkt's English model: the english.pickle word_tokenize loads, as NLTK re-exported it in punkt_tab/english ------
# Words ("types") are lower-case and carry no final period.

#: The model's abbreviations: a period after one of these does not end a sentence (and stays on the word, ``ave.``).
#: The model also lists ``". . "``, which holds spaces and so can never be a token; it is left out.
ABBREVIATIONS = frozenset("""
a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t c.o.m.b c.v calif chg cie co col colo
conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g f.j feb fla fri ft g g.d g.f g.k ga gen h h.c h.f h.m
i.m.s ill inc j.b j.c j.j j.k j.p j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c m.j maj messrs mg mich minn mr
mrs ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa ph.d prof r r.a r.h r.i r.j r.k r.t rep reps
s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn tues u.k u.n u.s u.s.a u.s.s.r v va vs vt w w.c w.r
w.va w.w wash wed wis yr
""".split())

#: The model's orthographic contexts, reduced to what a lower-case word can use. After an initial (``j.``) or a number
#: (``3.``), punkt breaks before a lower-case word only if training saw it begin a sentence lower-case and never saw
#: it capitalised; these four are the only such words. The rest of the model cannot change a split of lower-cased
#: text, so it is left out: its sentence starters and other orthographic data act only on a capitalised next word,
#: and each of its collocations (a number or an initial, then a word: ``##number## business``, ``j walter``) only
#: keeps a break away where the rule above already does.
_LOWER_CASE_SENTENCE_STARTERS = ("administrators", "b-week", "r-revised", "z-holiday")
_ORTHO_BEG_LC = 1 << 4  # punkt's flag "seen lower-case at the beginning of a sentence"


class _LanguageVars(PunktLanguageVars):
    # 3.4.5's characters that end a punkt word (later NLTK added curly quotes and guillemets).
    _re_non_word_chars = r"(?:[?!)\";}\]\*:@\'\({\[])"
    # 3.4.5's closing punctuation that stays with the sentence before a break.
    re_boundary_realignment = re.compile(r'["\')\]}]+?(?:\s+|(?=--)|$)', re.MULTILINE | re.ASCII)  # Python 2's \s

    def _word_tokenizer_re(self):
        # Punkt's word pattern compiled with the standard ``re`` as in 3.4.5 (NLTK may compile it with the
        # third-party ``regex``, whose \w and \s differ on some characters).
        return _punkt_word_pattern(self._word_tokenize_fmt % {
            "NonWord": self._re_non_word_chars, "MultiChar": self._re_multi_char_punct,
            "WordStart": self._re_word_start})


@functools.cache
def _punkt_word_pattern(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.UNICODE | re.VERBOSE)


class _Token(PunktToken):
    # 3.4.5's token patterns with the standard ``re``; a number's digits are ASCII as on Python 2, where this
    # pattern was compiled without re.UNICODE.
    __slots__ = ()
    _RE_ELLIPSIS = re.compile(r"\.\.+$")
    _RE_NUMERIC = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$", re.ASCII)
    _RE_INITIAL = re.compile(r"[^\W\d]\.$")


class _SentenceSplitter(PunktSentenceTokenizer):
    # 3.4.5 found candidate sentence ends with one pattern, ``\S*[.?!](?=(NonWord|\s+(\S+)))``: the word material
    # before a sentence-ending character, then a non-word character or whitespace and the next token (later NLTK
    # finds them differently). Searched as written, it rescans a run of non-blank characters from each of its
    # positions: quadratic in a long run. Its greedy ``\S*`` matches once per run, from the run's start to the
    # run's last end character whose look-ahead holds, which is how the candidates are found here, in one pass.
    _ends = re.compile(r"[.?!](?=(?P<after_tok>%s|\s+(?P<next_tok>\S+)))" % _LanguageVars._re_non_word_chars)
    _runs = re.compile(r"\S+")

    def _slices_from_text(self, text):
        start = 0
        ends = self._ends.finditer(text)
        end = next(ends, None)
        for run in self._runs.finditer(text):
            last = None
            while end is not None and end.start() < run.end():
                last, end = end, next(ends, None)
            if last is None:
                continue
            if self.text_contains_sentbreak(text[run.start():last.end()] + last.group("after_tok")):
                yield slice(start, last.end())
                start = last.start("next_tok") if last.group("next_tok") else last.end()
        yield slice(start, len(text.rstrip()))


@functools.cache
def _sentence_splitter() -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    for word in _LOWER_CASE_SENTENCE_STARTERS:
        params.ortho_context[word] = _ORTHO_BEG_LC
    return _SentenceSplitter(params, lang_vars=_LanguageVars(), token_cls=_Token)


# --- NLTK 3.4.5's word rules (TreebankWordTokenizer plus word_tokenize's four additions), applied in order ----------
_A, _U = re.ASCII, re.UNICODE
_ASCII_BLANKS = " \t\n\r\x0b\x0c"


def _compiled(rules: list[tuple[str, int, str]]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern, flags), replacement) for pattern, flags, replacement in rules]


#: Rules on the sentence as it is.
_WORD_RULES = _compiled([
    # Opening quotes. Curly/low opening quotes, guillemet « and runs of backticks stand apart.
    ("([«“‘„]|`+)", _U, r" \1 "),
    ('^"', _A, "``"),  # a double quote opening the sentence becomes ``
    ("(``)", _A, r" \1 "),
    (r"""([ (\[{<])("|'')""", _A, r"\1 `` "),  # ... and one after a space or an opening bracket
    # A single quote before a one-letter word ('n', 'a) splits off; before a longer word ('no) it does not.
    (r"(?i)(')(?!re|ve|ll|m|t|s|d)(\w)\b", _U, r"\1 \2"),
    # Punctuation. The sentence's final period (not one of several) splits off, with any closing brackets/quotes.
    (r"""([^.])(\.)([\])}>"'»”’ ]*)\s*$""", _U, r"\1 \2 \3 "),
    (r"([:,])([^\d])", _A, r" \1 \2"),  # a comma or colon not before a digit (1,000 and 3:30 stay whole)
    (r"([:,])$", _A, r" \1 "),
    (r"\.\.\.", _A, " ... "),  # an ellipsis of exactly three dots ("...." -> "... ."); two dots stay on the word
    (r"[;@#$%&]", _A, r" \g<0> "),
    (r"""([^.])(\.)([\])}>"']*)\s*$""", _A, r"\1 \2\3 "),  # the final period again, with ASCII \s
    (r"[?!]", _A, r" \g<0> "),
    (r"([^'])' ", _A, r"\1 ' "),  # a single quote closing a word
    (r"[\]\[(){}<>]", _A, r" \g<0> "),  # brackets
    ("--", _A, " -- "),
])
#: Rules on the result padded with a space at each end.
_PADDED_WORD_RULES = _compiled([
    # Closing quotes.
    ("([»”’])", _U, r" \1 "),
    ('"', _A, " '' "),
    (r"(\S)('')", _A, r"\1 \2 "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", _A, r"\1 \2 "),  # clitics: dog 's, i 'm, he 'd
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", _A, r"\1 \2 "),  # we 'll, they 're, is n't
    # Fused words split in two: cannot, d'ye, gimme, gonna, gotta, lemme, mor'n, wanna, 'tis, 'twas.
    *((rf"(?i)\b({first})({second}){end}", _A, r" \1 \2 ") for first, second, end in [
        ("can", "not", r"\b"), ("d", "'ye", r"\b"), ("gim", "me", r"\b"), ("gon", "na", r"\b"), ("got", "ta", r"\b"),
        ("lem", "me", r"\b"), ("mor", "'n", r"\b"), ("wan", "na", r"\s")]),
    (r"(?i) ('t)(is)\b", _A, r" \1 \2 "),
    (r"(?i) ('t)(was)\b", _A, r" \1 \2 "),
])


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences as ``word_tokenize`` does on lower-cased captions (see the module docstring)."""
    return _sentence_splitter().tokenize(text)


def _words(sentence: str) -> list[str]:
    for pattern, replacement in _WORD_RULES:
        sentence = pattern.sub(replacement, sentence)
    sentence = f" {sentence} "
    for pattern, replacement in _PADDED_WORD_RULES:
        sentence = pattern.sub(replacement, sentence)
    return sentence.split()


def tokenize(sentence: str) -> list[str]:
    """Lower-case ``sentence`` and split it into word tokens like NLTK 3.4.5's ``word_tokenize(sentence.lower())``.

    Surrounding ASCII blanks are stripped first, as the authors' loaders stripped each caption line (``line.strip()``
    on a Python 2 byte string); a blank before an opening ``"`` would otherwise change its token.

    Example: ``"The dog's ball isn't red."`` -> ``['the', 'dog', "'s", 'ball', 'is', "n't", 'red', '.']``.
    """
    text = sentence.strip(_ASCII_BLANKS).lower()
    return [token for part in split_sentences(text) for token in _words(part)]
