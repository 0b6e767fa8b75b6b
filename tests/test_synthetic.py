"""Synthetic data: the precomp format, determinism, caption shapes, and a planted signal a linear model can find."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from itmatch.cli import main
from itmatch.data.precomp import load_split
from itmatch.data.synthetic import CONCEPTS, write_synthetic
from itmatch.data.tokenize import tokenize
from itmatch.data.vocab import load_vocab
from itmatch.errors import ItmatchError
from itmatch.fileio import MARKER

SMALL = dict(n_regions=6, feature_dim=32)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_writes_precomp_splits_and_vocab(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path / "d", n_images={"train": 20, "dev": 4, "test": 3, "testall": 5}, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}_{k}" for s in ("train", "dev", "test", "testall") for k in ("ims.npy", "caps.txt")]
        + ["vocab.json", MARKER]
    )
    for split, n in {"train": 20, "dev": 4, "test": 3, "testall": 5}.items():
        data = load_split(out, split)
        assert (data.n_images, data.n_captions, data.features.shape) == (n, 5 * n, (n, 6, 32))
        assert data.features.dtype == np.float32 and float(np.min(data.features)) >= 0.0
    vocab = load_vocab(out / "vocab.json")
    train_dev = load_split(out, "train").captions + load_split(out, "dev").captions
    assert {t for c in train_dev for t in tokenize(c)} == set(vocab.word2idx) - {"<pad>", "<start>", "<end>", "<unk>"}


def test_never_writes_into_a_folder_of_the_users_and_replaces_its_own_whole(tmp_path: Path) -> None:
    mine = tmp_path / "f30k_precomp"
    mine.mkdir()
    (mine / "train_caps.txt").write_text("a caption of mine\n")
    (mine / "vocab.json").write_text("{}")
    with pytest.raises(ItmatchError, match=r"f30k_precomp: holds files itmatch did not write \(e.g. train_caps.txt"):
        write_synthetic(mine, n_images=2, **SMALL)
    assert sorted(p.name for p in mine.iterdir()) == ["train_caps.txt", "vocab.json"]
    assert (mine / "train_caps.txt").read_text() == "a caption of mine\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    ours = write_synthetic(tmp_path / "ours", n_images={"train": 3, "dev": 2, "test": 2}, **SMALL)
    write_synthetic(ours, n_images={"train": 2, "test": 4}, **SMALL)  # replaced whole: no dev split of the first
    assert sorted(p.name for p in ours.glob("*_caps.txt")) == ["test_caps.txt", "train_caps.txt"]
    assert load_split(ours, "test").n_images == 4


def test_int_count_means_train_dev_test(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path, n_images=3, **SMALL)
    assert sorted(p.name for p in out.glob("*_ims.npy")) == ["dev_ims.npy", "test_ims.npy", "train_ims.npy"]


def test_deterministic(tmp_path: Path) -> None:
    a = digest(write_synthetic(tmp_path / "a", n_images=5, seed=3, **SMALL))
    b = digest(write_synthetic(tmp_path / "b", n_images=5, seed=3, **SMALL))
    c = digest(write_synthetic(tmp_path / "c", n_images=5, seed=4, **SMALL))
    assert a == b
    assert a["train_ims.npy"] != c["train_ims.npy"] and a["train_caps.txt"] != c["train_caps.txt"]


def test_captions_share_concept_words(tmp_path: Path) -> None:
    data = load_split(write_synthetic(tmp_path, n_images={"train": 200}, **SMALL), "train")
    lengths = [len(c.split()) for c in data.captions]
    assert min(lengths) == 1 and max(lengths) <= 25
    assert any(c.endswith(".") for c in data.captions) and any(c.endswith("!") for c in data.captions)
    assert any(" . " in c for c in data.captions)  # some captions have two sentences
    for image in range(data.n_images):
        words = [set(tokenize(c)) & set(CONCEPTS) for c, i in zip(data.captions, data.caption_image) if i == image]
        assert all(words) and set.intersection(*words)  # every caption names a concept, all share one


def test_repeated_images(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path / "r", n_images={"train": 7}, repeat_images=True, **SMALL)
    plain = write_synthetic(tmp_path / "p", n_images={"train": 7}, **SMALL)
    repeated = load_split(out, "train")
    assert repeated.features.shape[0] == 35
    np.testing.assert_array_equal(repeated.image_rows, np.arange(0, 35, 5))
    expected = np.asarray(load_split(plain, "train").features)
    np.testing.assert_array_equal(repeated.image_features(np.arange(7)), expected)
    assert repeated.captions == load_split(plain, "train").captions


def test_variable_caption_counts_write_cap2img(tmp_path: Path) -> None:
    out = write_synthetic(tmp_path, n_images={"train": 30}, captions_per_image=(1, 7), **SMALL)
    assert (out / "train_cap2img.npy").is_file()
    data = load_split(out, "train")
    per_image = np.bincount(data.caption_image, minlength=30)
    assert per_image.min() >= 1 and per_image.max() <= 7 and len(set(per_image.tolist())) > 1
    assert data.n_images == 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_images={"val": 3}), "unknown split"),
        (dict(n_images=0), "at least one image"),
        (dict(n_images=2, captions_per_image=(3, 2)), "captions per image"),
        (dict(n_images=2, captions_per_image=4, repeat_images=True), "exactly 5 captions"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ItmatchError, match=message):
        write_synthetic(tmp_path, **kwargs, **SMALL)


def test_planted_signal_is_learnable(tmp_path: Path) -> None:
    """A ridge map from mean-pooled features to caption bag-of-words retrieves the right test image far above chance."""
    out = write_synthetic(tmp_path, n_images={"train": 300, "test": 50}, n_regions=16, feature_dim=128)
    vocab = load_vocab(out / "vocab.json")

    def bags(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        data = load_split(out, split)
        text = np.zeros((data.n_captions, len(vocab)))
        for row, caption in enumerate(data.captions):
            text[row, vocab.encode(caption)] = 1.0
        return np.asarray(data.features).mean(axis=1), text, data.caption_image

    images, text, caption_image = bags("train")
    image_mean, text_mean = images.mean(axis=0), text.mean(axis=0)
    x = images - image_mean
    target = np.stack([text[caption_image == i].mean(axis=0) for i in range(len(images))]) - text_mean
    weights = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ target)
    test_images, test_text, test_caption_image = bags("test")
    scores = (test_text - text_mean) @ ((test_images - image_mean) @ weights).T  # (captions, images)
    recall_at_1 = np.mean(scores.argmax(axis=1) == test_caption_image)
    assert recall_at_1 > 0.5  # chance is 0.02


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--images", "4", "--test-images", "2", "--dev-images", "3",
            "--regions", "2", "--dim", "8", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "train 4 images, dev 3 images, test 2 images" in capsys.readouterr().out.strip().splitlines()[-1]
    assert [load_split(tmp_path, s).n_images for s in ("train", "dev", "test")] == [4, 3, 2]


def test_cli_synth_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--images", "2", "--captions-per-image", "3", "--repeat-images"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: repeated images need exactly 5 captions per image"]


@pytest.mark.slow
def test_full_size_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_synthetic(tmp_path, n_images={"train": 1000})
    assert time.perf_counter() - start < 10.0
    assert load_split(tmp_path, "train").features.shape == (1000, 36, 2048)
