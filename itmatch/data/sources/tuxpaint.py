"""The Tux Paint stamps (Debian ``tuxpaint-stamps-default``) as a small, real image-caption dataset.

Each stamp is a picture ``NAME.png`` and/or ``NAME.svg`` (PNG is used when both exist) with ``NAME.txt`` beside it,
whose first line is the English description ("A blackbird.") and whose other lines are translations
(``fr.utf8=...``). ``NAME_mirror``/``NAME_flip`` pictures are alternate views of ``NAME`` and are not stamps.
The caption is the first line with typographic quotes and dashes made ASCII and spaces normalised; stamps without a
usable English line are left out. The 2022.06.04 package has 961 stamp pictures, 950 with a caption.

The split is deterministic (sha256 of seed and stamp name): 150 test and 100 dev stamps by default, the rest train.
Features are cached under ``$ITMATCH_CACHE/features`` keyed by package version, extractor, R and the extractor's
settings, so a second build only writes the precomp files.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itmatch.data.sources import openclipart
from itmatch.data.sources.debian import installed_version, unpacked_package
from itmatch.data.sources.dataset import BuildResult, check_out, features_cache, finish_build, split_items
from itmatch.data.sources.manifest import Item
from itmatch.errors import ItmatchError
from itmatch.features import (
    DEFAULT_EXTRACTOR,
    FeatureSet,
    extract_features,
    get_extractor,
)

PACKAGE = "tuxpaint-stamps-default"
SYSTEM_STAMPS = Path("/usr/share/tuxpaint/stamps")
ALTERNATE_VIEWS = ("_mirror", "_flip")
DEV_STAMPS, TEST_STAMPS = 100, 150

_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ",
                             "\u2013": " - ", "\u2026": "...", "\u00a0": " "})
_TRANSLATION = re.compile(r"^[A-Za-z_@]+\.utf-?8\s*=", re.IGNORECASE)
_LETTER = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Stamp:
    """One stamp: ``name`` (path under the stamps folder, no suffix), its picture, its English caption."""

    name: str
    image: Path
    caption: str


def stamps_folder(cache: Path | None = None) -> tuple[Path, str]:
    """(the stamps folder, package version): the system install, else the package unpacked in the cache."""
    version = installed_version(PACKAGE)
    if SYSTEM_STAMPS.is_dir() and version:
        return SYSTEM_STAMPS, version
    root, version = unpacked_package(PACKAGE, cache)
    return root / "usr/share/tuxpaint/stamps", version


def clean_caption(line: str) -> str | None:
    """The usable English caption in a description's first line, or None."""
    text = " ".join(line.translate(_TYPOGRAPHY).split()).strip(" -")
    if not text or _TRANSLATION.match(text) or not _LETTER.search(text):
        return None
    return text


def find_stamps(folder: Path) -> tuple[list[Stamp], list[str]]:
    """(captioned stamps sorted by name, names of stamps left out for want of a usable caption)."""
    pictures: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in (".png", ".svg") or not path.is_file():
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name.endswith(ALTERNATE_VIEWS):
            continue
        if name not in pictures or suffix == ".png":
            pictures[name] = path
    stamps, uncaptioned = [], []
    for name, image in sorted(pictures.items()):
        caption = _first_line(folder / f"{name}.txt")
        caption = clean_caption(caption) if caption is not None else None
        if caption is None:
            uncaptioned.append(name)
        else:
            stamps.append(Stamp(name, image, caption))
    return stamps, uncaptioned


def _first_line(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    return text.splitlines()[0] if text.strip() else None


def _subset(names: list[str], limit: int | None) -> set[str]:
    """``limit`` names spread over all categories (first by sha256 of the name); all when ``limit`` is None."""
    if limit is None:
        return set(names)
    return set(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:limit])


def build_tuxpaint(
    out: str | os.PathLike,
    *,
    with_openclipart: bool = False,
    dev: int = DEV_STAMPS,
    test: int = TEST_STAMPS,
    seed: int = 0,
    limit: int | None = None,
    extractor: str = DEFAULT_EXTRACTOR,
    regions: int = 36,
    batch_size: int = 8,
    progress: bool = True,
    extractor_options: dict[str, Any] | None = None,
) -> BuildResult | None:
    """Build the Tux Paint precomp dataset in ``out`` (see the module docstring).

    ``limit`` keeps that many stamps (and drawings), for quick trials; ``with_openclipart`` adds the Open Clip Art
    drawings to the train split only (see :mod:`itmatch.data.sources.openclipart`). Packages and features are
    cached under ``$ITMATCH_CACHE`` (default ``~/.cache/itmatch``). Under ``torchrun`` the processes extract
    together and rank 0 alone writes the dataset and returns its result; the other ranks return None.
    """
    started = time.perf_counter()
    out = Path(out)
    check_out(out)
    if limit is not None and limit < 1:
        raise ItmatchError(f"--limit must be at least 1, got {limit}")
    made = get_extractor(extractor, regions=regions, **(extractor_options or {}))
    folder, version = stamps_folder()
    stamps, uncaptioned = find_stamps(folder)
    if not stamps:
        raise ItmatchError(f"{folder}: no captioned stamps found; reinstall {PACKAGE} or clear its cache folder")
    keep = _subset([s.name for s in stamps], limit)
    stamps = [s for s in stamps if s.name in keep]
    items = [Item(s.image.absolute(), (s.caption,), f"tuxpaint:{s.name}", s.name) for s in stamps]
    splits = split_items(items, dev, test, seed)

    suffix = [f"limit{limit}"] if limit is not None else []
    stamp_features = extract_features(
        [item.image for item in items], features_cache("tuxpaint", made.config(), version, *suffix),
        extractor=made, batch_size=batch_size, progress=progress, folder_option=None,
    )
    locate: dict[Path, tuple[FeatureSet, int]] = {item.image: (stamp_features, i) for i, item in enumerate(items)}
    computed = stamp_features.computed
    info: dict[str, Any] = {"source": "tuxpaint", "package": f"{PACKAGE} {version}", "stamps": len(stamps),
                            "uncaptioned_stamps": uncaptioned, "limit": limit}

    if with_openclipart:
        drawings_dir, clip_version = openclipart.drawings_folder()
        drawings = openclipart.find_drawings(drawings_dir)
        keep = _subset([d.name for d in drawings], limit)
        drawings = [d for d in drawings if d.name in keep]
        clip_features = extract_features(
            [d.image.absolute() for d in drawings],
            features_cache("openclipart", made.config(), clip_version, *suffix),
            extractor=made, batch_size=batch_size, progress=progress, skip_unreadable=True, folder_option=None,
        )
        ok = clip_features.ok
        extra = [Item(d.image.absolute(), d.captions, f"openclipart:{d.name}", d.name)
                 for d, good in zip(drawings, ok) if good]
        locate |= {item.image: (clip_features, row) for row, item in zip(ok.nonzero()[0], extra)}
        splits["train"] += extra
        computed += clip_features.computed
        info["openclipart"] = {"package": f"{openclipart.PACKAGE} {clip_version}", "drawings": len(extra),
                               "unrenderable": [d.name for d, good in zip(drawings, ok) if not good]}

    return finish_build(out, splits, locate, {**info, "seed": seed}, computed, started)
