"""Vocabulary: the authors' JSON layout, special ids, the threshold rule, encoding and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itmatch.cli import main
from itmatch.data.vocab import END, PAD, START, UNK, Vocabulary, build_vocab, load_vocab, save_vocab
from itmatch.errors import ItmatchError

CAPTIONS = [
    "A dog runs.",
    "A dog sleeps.",
    "The cat isn't a dog.",
    "A cat!",
]


def authors_json(words: list[str]) -> dict:
    """A vocabulary exactly as the authors' ``serialize_vocab`` wrote it (json.dump turns int keys into strings)."""
    word2idx = {w: i for i, w in enumerate(["<pad>", "<start>", "<end>", "<unk>", *words])}
    return {"word2idx": word2idx, "idx2word": {str(i): w for w, i in word2idx.items()}, "idx": len(word2idx)}


def test_special_tokens() -> None:
    vocab = Vocabulary()
    assert (vocab("<pad>"), vocab("<start>"), vocab("<end>"), vocab("<unk>")) == (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert len(vocab) == 4
    assert vocab("zebra") == UNK


def test_build_vocab_threshold_and_order() -> None:
    # counts: a 4, dog 3, . 3, cat 2, the/runs/sleeps/is/n't/! 1
    vocab = build_vocab(CAPTIONS, threshold=2)
    assert list(vocab.word2idx) == ["<pad>", "<start>", "<end>", "<unk>", "a", ".", "dog", "cat"]
    assert build_vocab(CAPTIONS).word2idx == {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 4}
    assert len(build_vocab(CAPTIONS, threshold=1)) == 4 + 10
    assert build_vocab(reversed(CAPTIONS), threshold=1) == build_vocab(CAPTIONS, threshold=1)


def test_build_vocab_rejects_bad_threshold() -> None:
    with pytest.raises(ItmatchError, match="threshold"):
        build_vocab(CAPTIONS, threshold=0)


def test_encode() -> None:
    vocab = build_vocab(CAPTIONS, threshold=2)
    assert vocab.encode("A dog isn't a CAT.") == [START, 4, 6, UNK, UNK, 4, 7, 5, END]
    assert vocab.encode_all(["dog", "a zebra"]) == [[1, 6, 2], [1, 4, 3, 2]]
    assert vocab.decode([1, 6, 2]) == ["<start>", "dog", "<end>"]


def test_round_trip(tmp_path: Path) -> None:
    vocab = build_vocab(CAPTIONS, threshold=1)
    save_vocab(vocab, tmp_path / "vocab.json")
    data = json.loads((tmp_path / "vocab.json").read_text())
    assert set(data) == {"word2idx", "idx2word", "idx"}
    assert data["idx2word"]["4"] == "a" and data["idx"] == len(vocab)
    loaded = load_vocab(tmp_path / "vocab.json")
    assert loaded == vocab
    assert loaded.idx2word == vocab.idx2word
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_loads_authors_layout(tmp_path: Path) -> None:
    path = tmp_path / "f30k_precomp_vocab.json"
    path.write_text(json.dumps(authors_json(["a", "man", "dog", "n't", "'s", "."])))
    vocab = load_vocab(path)
    assert len(vocab) == 10
    assert vocab.encode("The man's dog isn't here.") == [1, 3, 5, 8, 6, 3, 7, 3, 9, 2]
    assert vocab.idx2word[7] == "n't"


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not a JSON vocabulary"),
        ([1, 2], "missing keys"),
        ({"word2idx": {}, "idx2word": {}}, "missing keys"),
        ({**authors_json(["a"]), "word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": "4"}}, "integer"),
        ({**authors_json(["a"]), "idx": 7}, "without gaps"),
        (
            {"word2idx": {"<unk>": 0, "<start>": 1, "<end>": 2, "<pad>": 3},
             "idx2word": {"0": "<unk>", "1": "<start>", "2": "<end>", "3": "<pad>"}, "idx": 4},
            "ids 0-3 must be <pad>, <start>, <end>, <unk>",
        ),
        ({**authors_json(["a"]), "idx2word": {"0": "<pad>"}}, "idx2word does not mirror"),
    ],
)  # fmt: skip
def test_bad_files(tmp_path: Path, data: object, message: str) -> None:
    path = _write(tmp_path / "bad_vocab.json", data)
    with pytest.raises(ItmatchError, match=message) as info:
        load_vocab(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ItmatchError, match="vocabulary file not found.*itmatch data vocab") as info:
        load_vocab(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)


def test_cli_vocab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("A dog runs.\nA dog sleeps.\n")
    (tmp_path / "b.txt").write_text("The cat isn't a dog.\nA cat!\n")
    argv = ["data", "vocab", "--captions", str(tmp_path / "a.txt"), "--captions", str(tmp_path / "b.txt"),
            "--out", str(tmp_path / "vocab.json"), "--threshold", "2"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {tmp_path / 'vocab.json'}: 8 words (threshold 2) from 4 captions in 2 files"
    )
    assert load_vocab(tmp_path / "vocab.json") == build_vocab(CAPTIONS, threshold=2)


def test_cli_vocab_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "vocab", "--captions", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "v.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.txt'}: caption file not found"
    assert not (tmp_path / "v.json").exists()
