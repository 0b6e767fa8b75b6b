"""Planted synthetic data in the precomp format, for tests, benchmarks and smoke runs of training.

Every image shows 2-4 hidden *concepts* out of a pool of 60 words (40 nouns, 20 adjectives). Each concept has a fixed
random direction in feature space; a region is the direction of one of its image's concepts (or nothing, for
background) plus Gaussian noise, clipped at 0 like ReLU'd CNN features. Each caption is an English-like sentence from
templates that names the image's nouns and some of their adjectives, so a model can learn which words go with which
feature directions, and captions of the same image share their concept words.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from itmatch.data.folder import FOLDER, VOCAB_FILE
from itmatch.data.precomp import CAPTIONS_PER_IMAGE, SPLITS, features_writer, write_captions
from itmatch.data.vocab import build_vocab, save_vocab
from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_dir

NOUNS = (
    "dog", "cat", "horse", "bird", "cow", "sheep", "elephant", "giraffe", "zebra", "bear",
    "man", "woman", "child", "boy", "girl", "bicycle", "car", "truck", "bus", "train",
    "boat", "airplane", "motorcycle", "umbrella", "kite", "ball", "frisbee", "skateboard", "surfboard", "bench",
    "table", "chair", "pizza", "cake", "banana", "apple", "clock", "tree", "flower", "building",
)  # fmt: skip
ADJECTIVES = (
    "red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "purple",
    "small", "large", "young", "old", "wooden", "striped", "shiny", "wet", "fluffy", "tall",
)  # fmt: skip
#: Concept ids: nouns first, then adjectives.
CONCEPTS = NOUNS + ADJECTIVES

_ONE_NOUN = (
    "{a}",
    "{a} {verb} {place}",
    "there is {a} {place}",
    "a picture of {a} {verb} {place} {extra}",
    "{a} that is {verb} {place}",
    "this is {a} . it is {verb} {place}",
)
_TWO_NOUNS = (
    "{a} and {b}",
    "{a} next to {b} {place}",
    "{a} is {verb} near {b} {place} {extra}",
    "in this photo , {a} and {b} can be seen {place}",
    "{a} {verb} {place} . {b} is nearby",
    "{b} with {a} {extra}",
)
_VERBS = ("standing", "sitting", "resting", "waiting", "shown", "seen", "staying")
_PLACES = ("in a park", "on the street", "near the water", "in front of a house", "at night", "during the day", "")
_EXTRAS = ("while people watch in the background", "on a sunny afternoon", "", "")
_ENDINGS = ("", " .", ".", "!", " .", "")

_BLOCK = 128  # images generated per block: bounds memory to ~40 MB at 36 x 2048


def write_synthetic(
    out: str | os.PathLike,
    *,
    n_images: dict[str, int] | int,
    captions_per_image: int | tuple[int, int] = CAPTIONS_PER_IMAGE,
    n_regions: int = 36,
    feature_dim: int = 2048,
    repeat_images: bool = False,
    seed: int = 0,
    noise: float = 1.0,
    vocab_threshold: int = 1,
    progress: bool = False,
) -> Path:
    """Write a planted precomp dataset to ``out`` and return it.

    ``n_images``: images per split (a dict over ``train``/``dev``/``test``/``testall``, or one count for train, dev
    and test). ``captions_per_image``: a count, or an inclusive range ``(lo, hi)`` drawn per image (then
    ``cap2img.npy`` is written). ``repeat_images`` stores every image 5 times like some released files.
    ``vocab.json`` is built from the train and dev captions. The same arguments always give the same bytes.
    ``out`` is written as a dataset folder (``itmatch.data.folder.FOLDER``): new, empty, or one itmatch wrote, which
    it replaces whole when complete; a folder holding other files is refused.
    """
    counts = _split_counts(n_images)
    _check_options(captions_per_image, n_regions, feature_dim, repeat_images)
    out = Path(out)
    directions = _concept_directions(seed, feature_dim)
    vocab_captions: list[str] = []
    with atomic_dir(out, FOLDER) as tmp:
        for split, count in counts.items():
            rngs = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)])).spawn(3)
            concepts = _image_concepts(rngs[0], count)
            captions, caption_image = _captions(rngs[1], concepts, captions_per_image)
            rows = count * CAPTIONS_PER_IMAGE if repeat_images else count
            with features_writer(tmp, split, (rows, n_regions, feature_dim)) as features:
                _fill_features(features, rngs[2], concepts, directions, noise, repeat_images, progress, split)
            write_captions(tmp, split, captions, None if repeat_images else caption_image)
            if split in ("train", "dev"):
                vocab_captions += captions
        save_vocab(build_vocab(vocab_captions, threshold=vocab_threshold), tmp / VOCAB_FILE)
    return out


def _split_counts(n_images: dict[str, int] | int) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS[:3], n_images) if isinstance(n_images, int) else dict(n_images)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ItmatchError(f"unknown split(s) {', '.join(sorted(unknown))}; choose from {', '.join(SPLITS)}")
    if any(n < 1 for n in counts.values()):
        raise ItmatchError(f"every split needs at least one image, got {counts}")
    return {split: counts[split] for split in SPLITS if split in counts}


def _check_options(
    captions_per_image: int | tuple[int, int], n_regions: int, feature_dim: int, repeat_images: bool
) -> None:
    lo, hi = _caption_range(captions_per_image)
    if not 1 <= lo <= hi:
        raise ItmatchError(f"captions per image must be >= 1 (a range needs lo <= hi), got {captions_per_image}")
    if n_regions < 1 or feature_dim < 1:
        raise ItmatchError(f"regions and feature dim must be >= 1, got {n_regions} and {feature_dim}")
    if repeat_images and captions_per_image != CAPTIONS_PER_IMAGE:
        raise ItmatchError(f"repeated images need exactly {CAPTIONS_PER_IMAGE} captions per image")


def _caption_range(captions_per_image: int | tuple[int, int]) -> tuple[int, int]:
    """``captions_per_image`` as an inclusive range."""
    if isinstance(captions_per_image, int):
        return captions_per_image, captions_per_image
    return captions_per_image


def _concept_directions(seed: int, feature_dim: int) -> np.ndarray:
    """``(len(CONCEPTS) + 1, D)`` float32: one N(0, 1) direction per concept, then a zero row for background."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(SPLITS)]))
    directions = rng.standard_normal((len(CONCEPTS) + 1, feature_dim), dtype=np.float32)
    directions[-1] = 0.0
    return directions


def _image_concepts(rng: np.random.Generator, n_images: int) -> list[tuple[list[int], list[int]]]:
    """Per image: (1-2 noun ids, 1-2 adjective ids), 2-4 concepts in all."""
    result = []
    for _ in range(n_images):
        nouns = rng.choice(len(NOUNS), size=rng.integers(1, 3), replace=False)
        adjectives = len(NOUNS) + rng.choice(len(ADJECTIVES), size=rng.integers(1, 3), replace=False)
        result.append((nouns.tolist(), adjectives.tolist()))
    return result


def _captions(
    rng: np.random.Generator, concepts: list[tuple[list[int], list[int]]], captions_per_image: int | tuple[int, int]
) -> tuple[list[str], np.ndarray]:
    """All captions in image order and the image of each."""
    lo, hi = _caption_range(captions_per_image)
    captions, caption_image = [], []
    for image, (nouns, adjectives) in enumerate(concepts):
        for _ in range(int(rng.integers(lo, hi + 1))):
            captions.append(_caption(rng, nouns, adjectives))
            caption_image.append(image)
    return captions, np.asarray(caption_image, dtype=np.int64)


def _caption(rng: np.random.Generator, nouns: list[int], adjectives: list[int]) -> str:
    """One sentence naming every noun of the image, each adjective attached to a noun with probability 0.7."""
    described: dict[int, list[str]] = {noun: [] for noun in nouns}
    for adjective in adjectives:
        if rng.random() < 0.7:
            described[nouns[int(rng.integers(len(nouns)))]].append(CONCEPTS[adjective])
    phrases = [_noun_phrase(rng, [*words, CONCEPTS[noun]]) for noun, words in described.items()]
    if len(phrases) == 1 and rng.random() < 0.1:
        return CONCEPTS[nouns[0]]  # a one-word caption
    templates = _ONE_NOUN if len(phrases) == 1 else _TWO_NOUNS
    text = templates[int(rng.integers(len(templates)))].format(
        a=phrases[0],
        b=phrases[-1],
        verb=_pick(rng, _VERBS),
        place=_pick(rng, _PLACES),
        extra=_pick(rng, _EXTRAS),
    )
    return " ".join(text.split()) + _pick(rng, _ENDINGS)


def _noun_phrase(rng: np.random.Generator, words: list[str]) -> str:
    article = _pick(rng, ("a", "the", "one"))
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return " ".join([article, *words])


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill_features(
    features: np.ndarray,
    rng: np.random.Generator,
    concepts: list[tuple[list[int], list[int]]],
    directions: np.ndarray,
    noise: float,
    repeat_images: bool,
    progress: bool,
    split: str,
) -> None:
    """Fill ``features`` block by block: each region shows one of its image's concepts (3 in 4) or background."""
    n_images, n_regions = len(concepts), features.shape[1]
    background = len(directions) - 1
    table = np.full((n_images, 4), background, dtype=np.int64)
    for image, (nouns, adjectives) in enumerate(concepts):
        table[image, : len(nouns) + len(adjectives)] = nouns + adjectives
    n_concepts = (table != background).sum(axis=1)
    repeat = CAPTIONS_PER_IMAGE if repeat_images else 1
    # Reused buffers: allocating ~40 MB per block would cost more in page faults than the arithmetic.
    noise_buffer = np.empty((_BLOCK, n_regions, features.shape[2]), dtype=np.float32)
    signal_buffer = np.empty_like(noise_buffer)
    for start in tqdm(range(0, n_images, _BLOCK), desc=f"{split} features", disable=not progress, unit="block"):
        stop = min(start + _BLOCK, n_images)
        pick = (rng.random((stop - start, n_regions)) * n_concepts[start:stop, None]).astype(np.int64)
        ids = np.take_along_axis(table[start:stop], pick, axis=1)
        ids[rng.random(ids.shape) < 0.25] = background
        block, signal = noise_buffer[: stop - start], signal_buffer[: stop - start]
        rng.standard_normal(dtype=np.float32, out=block)
        block *= noise
        block += np.take(directions, ids, axis=0, out=signal)
        np.maximum(block, 0.0, out=block)
        features[start * repeat : stop * repeat] = np.repeat(block, repeat, axis=0) if repeat > 1 else block
