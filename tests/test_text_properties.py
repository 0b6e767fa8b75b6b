"""Hypothesis properties of everything that reads a user's text: manifests (JSON Lines and CSV), the caption
tokenizer and vocabularies. Arbitrary input never crashes: it is read, or refused with an ``ItmatchError`` whose
message (or, for a manifest, each listed problem) is one line."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from itmatch.data.sources.manifest import ManifestError, read_manifest
from itmatch.data.tokenize import tokenize
from itmatch.data.vocab import END, START, UNK, build_vocab, load_vocab, vocab_from_json
from itmatch.errors import ItmatchError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)
#: Picture paths a careless or hostile user may write.
paths = st.text() | st.sampled_from(["\x00", "a\x00.png", "a" * 300, "x/" * 3000 + "a.png", "../" * 40, "/", ".",
                                      "~/a.png", "\udcff.png", " ", "a.png\n"])
#: Manifest lines that are near misses of a good one: a path, captions of any type, extra keys.
records = st.fixed_dictionaries({}, optional={"image": paths | json_values,
                                              "captions": st.lists(st.text() | json_values, max_size=3) | json_values,
                                              "extra": json_values})


def one_line(message: str) -> bool:
    return len(message.splitlines()) == 1


def read_or_refuse(path: Path) -> None:
    """Read the manifest ``path``; assert the outcome is a manifest or a one-line refusal."""
    try:
        manifest = read_manifest(path, check_images=False)
    except ManifestError as exc:  # lists every bad line, one a line
        assert exc.problems and all(one_line(str(p)) for p in exc.problems)
        return
    except ItmatchError as exc:
        assert one_line(str(exc)), str(exc)
        return
    assert all(one_line(str(p)) for p in manifest.problems), [str(p) for p in manifest.problems]
    for item in manifest.items:
        assert item.captions and all(c.strip() and one_line(c) for c in item.captions)


_FOLDER = Path(tempfile.mkdtemp(prefix="itmatch-text-properties-"))  # one file per suffix, rewritten per example
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)  # the suite leaves nothing in /tmp


def write(suffix: str, data: bytes) -> Path:
    path = _FOLDER / f"manifest{suffix}"
    path.write_bytes(data)
    return path


@SETTINGS
@given(text=st.text(), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_any_text_as_a_manifest_is_read_or_refused_in_one_line(text, suffix):
    read_or_refuse(write(suffix, text.encode("utf-8", "surrogatepass")))


@SETTINGS
@given(data=st.binary(), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_any_bytes_as_a_manifest_are_read_or_refused_in_one_line(data, suffix):
    read_or_refuse(write(suffix, data))


@SETTINGS
@given(lines=st.lists(records | json_values, max_size=6))
@example(lines=[{"image": "a\x00.png", "captions": ["a dog"]}, {"image": "a" * 300, "captions": ["a cat"]}])
def test_json_lines_of_any_shape_are_read_or_refused_in_one_line(lines):
    read_or_refuse(write(".jsonl", "\n".join(json.dumps(line) for line in lines).encode()))


@SETTINGS
@given(rows=st.lists(st.tuples(paths, st.text()) | st.lists(st.text(), max_size=4), max_size=6))
def test_csv_rows_of_any_shape_are_read_or_refused_in_one_line(rows):
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    read_or_refuse(write(".csv", buffer.getvalue().encode("utf-8", "surrogatepass")))


@SETTINGS
@given(text=st.text())
def test_the_tokenizer_gives_lower_case_tokens_without_blanks_for_any_text(text):
    tokens = tokenize(text)
    assert all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in tokens)
    assert all(t == t.lower() for t in tokens)
    kept = "".join(c for t in tokens for c in t if c.isalnum())
    assert kept == "".join(c for c in text.lower() if c.isalnum())  # no letter or digit is lost or invented


@SETTINGS
@given(captions=st.lists(st.text(), max_size=8), probe=st.text())
def test_a_vocabulary_of_any_captions_encodes_them_without_unknown_words(captions, probe):
    vocab = build_vocab(captions, threshold=1)
    assert vocab_from_json(json.loads(json.dumps(vocab.to_json())), "vocab.json") == vocab
    for caption in captions:
        ids = vocab.encode(caption)
        assert ids[0] == START and ids[-1] == END and UNK not in ids
        assert vocab.decode(ids[1:-1]) == tokenize(caption)
    assert all(0 <= i < len(vocab) for i in vocab.encode(probe))


@SETTINGS
@given(data=json_values | st.fixed_dictionaries({"word2idx": json_values, "idx2word": json_values,
                                                  "idx": json_values}))
def test_any_json_as_a_vocabulary_is_read_or_refused_in_one_line(data):
    path = write(".json", json.dumps(data).encode())
    try:
        vocab = load_vocab(path)
    except ItmatchError as exc:
        assert one_line(str(exc)) and str(path) in str(exc)
        return
    assert vocab.decode(range(4)) == ["<pad>", "<start>", "<end>", "<unk>"]


@SETTINGS
@given(data=st.binary())
def test_any_bytes_as_a_vocabulary_are_read_or_refused_in_one_line(data):
    path = write(".json", data)
    try:
        load_vocab(path)
    except ItmatchError as exc:
        assert one_line(str(exc)) and str(path) in str(exc)
