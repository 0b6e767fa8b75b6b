"""Pictures with captions (``Item`` lists, from a manifest or a packaged source) into a dataset folder: a
deterministic split, region features (cached and resumable, see :mod:`itmatch.features`), and the precomp writer
(:mod:`itmatch.data.folder`; built in a temporary folder beside ``out`` and renamed at the end, so ``out`` is never
half-written).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.data.folder import FOLDER, VOCAB_FILE, write_info, write_pictures
from itmatch.data.precomp import features_writer, write_captions
from itmatch.data.sources.debian import cache_dir
from itmatch.data.sources.manifest import Item, ManifestError, Problem, read_manifest
from itmatch.data.vocab import build_vocab, save_vocab
from itmatch.distributed import launch_rank
from itmatch.errors import ItmatchError
from itmatch.features import DEFAULT_EXTRACTOR, Extractor, FeatureSet, extract_features, get_extractor
from itmatch.fileio import atomic_dir, check_folder

SPLIT_NAMES = ("train", "dev", "test")


@dataclass
class BuildResult:
    """What a build wrote: ``out``, per split ``{"images": n, "captions": m}``, the vocabulary size, skipped lines,
    and the extraction work (pictures run through the extractor, seconds)."""

    out: Path
    splits: dict[str, dict[str, int]]
    vocab_size: int
    skipped: list[Problem] = field(default_factory=list)
    computed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI."""
        sizes = ", ".join(f"{s} {c['images']} images/{c['captions']} captions" for s, c in self.splits.items())
        skipped = f", skipped {len(self.skipped)} bad lines" if self.skipped else ""
        return (f"wrote {self.out}: {sizes}, vocabulary {self.vocab_size} words{skipped} "
                f"({self.computed} pictures extracted, {self.seconds:.1f} s)")


# -- splitting ------------------------------------------------------------------------------------------------------


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8/0.1/0.1"`` (or ``80/10/10``) -> train, dev, test fractions summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0 or parts[0] <= 0:
        raise ItmatchError(f"--split {text!r}: give train/dev/test fractions like 0.8/0.1/0.1 (train > 0)")
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(dev, test) picture counts for ``n`` pictures; a non-zero fraction gets at least one picture when n >= 3."""
    dev, test = (round(n * f) for f in fractions[1:])
    if n >= 3:
        dev = max(dev, 1) if fractions[1] > 0 else 0
        test = max(test, 1) if fractions[2] > 0 else 0
    return dev, test


def split_items(items: Sequence[Item], dev: int, test: int, seed: int = 0) -> dict[str, list[Item]]:
    """Deterministic split: pictures ordered by ``sha256(seed:key)``; the first ``test`` go to test, the next
    ``dev`` to dev, the rest to train. Each split keeps the listing order. Adding pictures moves no other picture
    between test and dev/train unless it ranks before it."""
    if dev < 0 or test < 0 or dev + test >= len(items):
        raise ItmatchError(f"cannot take {dev} dev and {test} test pictures out of {len(items)}: train would be "
                           "empty; lower --dev/--test or the --split fractions")
    rank = sorted(range(len(items)), key=lambda i: hashlib.sha256(f"{seed}:{items[i].key}".encode()).hexdigest())
    which = {i: "test" for i in rank[:test]} | {i: "dev" for i in rank[test:test + dev]}
    splits: dict[str, list[Item]] = {name: [] for name in SPLIT_NAMES}
    for i, item in enumerate(items):
        splits[which.get(i, "train")].append(item)
    return splits


# -- writing --------------------------------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """``out`` must be new, empty, or an earlier itmatch dataset holding only what itmatch wrote (a build replaces
    it); checked before the long work starts."""
    check_folder(out, FOLDER)


def write_dataset(
    out: str | os.PathLike,
    splits: Mapping[str, Sequence[Item]],
    locate: Mapping[Path, tuple[FeatureSet, int]],
    info: dict[str, Any],
) -> tuple[dict[str, dict[str, int]], int]:
    """Write the precomp directory ``out`` (see the module docstring) from items whose features ``locate`` gives
    as (feature set, row). Built in a temporary folder beside ``out``, renamed at the end. Returns the split
    counts and the vocabulary size."""
    with atomic_dir(out, FOLDER) as tmp:
        counts: dict[str, dict[str, int]] = {}
        for split, items in splits.items():
            if items:
                counts[split] = _write_split(tmp, split, items, locate)
        vocab = build_vocab((c for item in splits["train"] for c in item.captions), threshold=1)
        save_vocab(vocab, tmp / VOCAB_FILE)
        any_set = next(iter(locate.values()))[0]
        write_info(tmp, {
            **info,
            "extractor": any_set.info["extractor"],
            "regions": any_set.info["regions"],
            "dim": any_set.info["dim"],
            "splits": counts,
            "vocab_size": len(vocab),
        })
    return counts, len(vocab)


def _write_split(folder: Path, split: str, items: Sequence[Item], locate: Mapping[Path, tuple[FeatureSet, int]]
                 ) -> dict[str, int]:
    sets = [locate[item.image] for item in items]
    _, r, d = sets[0][0].features.shape
    boxes = np.empty((len(items), r, 4), dtype=np.float32)
    rows = []
    with features_writer(folder, split, (len(items), r, d)) as features:
        for j, (item, (feature_set, row)) in enumerate(zip(items, sets)):
            features[j] = feature_set.features[row]
            boxes[j] = feature_set.boxes[row]
            meta = feature_set.images[row]
            rows.append({"row": j, "path": str(item.image), "width": meta["width"], "height": meta["height"],
                         "source": item.source})
    captions = [caption for item in items for caption in item.captions]
    caption_image = np.repeat(np.arange(len(items), dtype=np.int64), [len(item.captions) for item in items])
    write_captions(folder, split, captions, caption_image)
    write_pictures(folder, split, boxes, rows)
    return {"images": len(items), "captions": len(captions)}


def features_cache(kind: str, extractor_config: dict[str, Any], *parts: str) -> Path:
    """The cache folder for extracted features: ``$ITMATCH_CACHE/features/KIND-...-HASH`` (hash of the config)."""
    digest = hashlib.sha256(json.dumps(extractor_config, sort_keys=True).encode()).hexdigest()[:12]
    name = "-".join([kind, *parts, str(extractor_config["name"]), str(extractor_config["regions"]), digest])
    return cache_dir() / "features" / "".join(c if c.isalnum() or c in "._-+" else "_" for c in name)


# -- the build -----------------------------------------------------------------------------------------------------


def build_dataset(
    out: str | os.PathLike,
    items: Sequence[Item],
    *,
    dev: int,
    test: int,
    extractor: Extractor,
    features_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    features_option: str | None = None,
) -> BuildResult | None:
    """Split ``items``, extract their features into ``features_dir`` (resumable cache; ``features_option``: the
    option that named it, None for the default cache), write the dataset.

    Under ``torchrun`` the processes extract together (see :mod:`itmatch.features.sharded`) and rank 0 alone
    writes the dataset and returns its result; the other ranks return None.
    """
    started = time.perf_counter()
    splits = split_items(items, dev, test, seed)
    feature_set = extract_features([item.image for item in items], features_dir, extractor=extractor,
                                   batch_size=batch_size, progress=progress, folder_option=features_option)
    locate = {item.image: (feature_set, row) for row, item in enumerate(items)}
    return finish_build(out, splits, locate, {**(info or {}), "seed": seed}, feature_set.computed, started)


def finish_build(out: str | os.PathLike, splits: Mapping[str, Sequence[Item]],
                 locate: Mapping[Path, tuple[FeatureSet, int]], info: dict[str, Any], computed: int,
                 started: float) -> BuildResult | None:
    """The end of every build, once the features are extracted: rank 0 (or the only process) writes the dataset
    and returns what it wrote (``computed`` pictures extracted since ``started``); other ``torchrun`` ranks return
    None."""
    if launch_rank():
        return None
    counts, vocab_size = write_dataset(out, splits, locate, info)
    return BuildResult(Path(out), counts, vocab_size, computed=computed, seconds=time.perf_counter() - started)


# -- from a manifest ------------------------------------------------------------------------------------------------


def build_from_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str | tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    skip_bad: bool = False,
    extractor: str = DEFAULT_EXTRACTOR,
    regions: int = 36,
    features_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool = True,
    extractor_options: dict[str, Any] | None = None,
) -> BuildResult | None:
    """Check ``manifest``, then build the precomp dataset ``out`` (see the module docstring).

    Bad lines raise :class:`ManifestError` listing all of them, before anything is extracted or written, unless
    ``skip_bad`` (then they are left out and listed in the result and in ``dataset.json``). Features are cached in
    ``features_dir`` (default: under ``$ITMATCH_CACHE/features``), so a rebuild with another split is instant.
    """
    out = Path(out)
    check_out(out)
    fractions = parse_fractions(split) if isinstance(split, str) else split
    made = get_extractor(extractor, regions=regions, **(extractor_options or {}))
    read = read_manifest(manifest, progress=progress)
    if read.problems and not skip_bad:
        raise ManifestError(read.path, read.problems)
    if not read.items:
        raise ItmatchError(f"{read.path}: no usable pictures; add lines like "
                           '{"image": "photo.jpg", "captions": ["a dog on a beach"]}')
    dev, test = split_sizes(len(read.items), fractions)
    manifest_id = hashlib.sha256(str(read.path.resolve()).encode()).hexdigest()[:12]
    result = build_dataset(
        out, read.items, dev=dev, test=test, seed=seed, extractor=made,
        features_dir=features_dir or features_cache("manifest", made.config(), manifest_id), batch_size=batch_size,
        progress=progress, features_option="--features" if features_dir else None,
        info={"source": "manifest", "manifest": str(read.path.resolve()), "split": list(fractions),
              "skipped": [str(p) for p in read.problems]},
    )
    if result is not None:
        result.skipped = read.problems
    return result
