"""The features directory's format: what a finished one holds, and reading it.

A finished directory holds::

    features.npy   (N, R, D) float32     boxes.npy   (N, R, 4) float32, x1 y1 x2 y2 in [0, 1]
    labels.npy     (N, R) int32 (-1: grid box)      scores.npy  (N, R) float32 (0: grid box)
    images.jsonl   one line per row: {"row", "path", "width", "height", "bytes", "mtime_ns"}, plus "error" for
                   a picture that could not be decoded (only with ``skip_unreadable``; its arrays are zeros)
    extractor.json the extractor's config, N, R, D -- written last: its presence means "complete"

An unfinished one holds the resumable run of :mod:`itmatch.features.writer` in ``.partial/`` (and, under
``torchrun``, the processes' shares in ``.shards/``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat

FORMAT_VERSION = 1
ARRAYS = ("features", "boxes", "labels", "scores")
INFO_FILE = "extractor.json"
IMAGES_FILE = "images.jsonl"
PARTIAL = ".partial"
SHARDS = ".shards"  # the processes' shares of a `torchrun` extraction (itmatch.features.sharded)
#: What an extraction writes in its folder (the scratch folders included, with all they hold).
SCRATCH = (PARTIAL, PARTIAL + ".new", SHARDS)  # folders, all of whose files are the extraction's
WRITTEN = (*(f"{n}.npy" for n in ARRAYS), IMAGES_FILE, INFO_FILE, *SCRATCH)
#: The features folder for :mod:`itmatch.fileio`'s rule (folders of older versions, finished or interrupted: by
#: their names and INFO_FILE or the partial run's plan).
FOLDER = FolderFormat("itmatch-features", FORMAT_VERSION, legacy=(*WRITTEN, *(f"{n}/**" for n in SCRATCH)),
                      legacy_files=((INFO_FILE, ("extractor", "count")),
                                    (f"{PARTIAL}/plan.json", ("config", "images"))))


@dataclass
class FeatureSet:
    """A finished features directory, arrays memory-mapped read-only.

    ``features`` (N, R, D) float32, ``boxes`` (N, R, 4), ``labels``/``scores`` (N, R); ``images[i]`` describes row
    i (``path``, ``width``, ``height``, ...); ``info`` is ``extractor.json``. ``computed`` and ``seconds`` say how
    many pictures the call that returned it ran through the extractor, and how long it took.
    """

    directory: Path
    features: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    images: list[dict[str, Any]]
    info: dict[str, Any]
    computed: int = 0
    seconds: float = 0.0
    paths: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.paths = [Path(row["path"]) for row in self.images]

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: False for rows whose picture could not be decoded (``skip_unreadable``)."""
        return np.array(["error" not in row for row in self.images], dtype=bool)

    def __len__(self) -> int:
        return len(self.images)


def open_features(directory: str | os.PathLike) -> FeatureSet:
    """Open a finished features directory; raise ``ItmatchError`` if it is missing or unfinished."""
    directory = Path(directory)
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        hint = "the extraction did not finish; rerun it to resume" if (directory / PARTIAL).exists() else \
            "run `itmatch extract` first"
        raise ItmatchError(f"{directory}: not a finished features directory (no {INFO_FILE}); {hint}")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    images = _read_jsonl(directory / IMAGES_FILE)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    return FeatureSet(directory, images=images, info=info, **arrays)


def image_key(path: Path) -> dict[str, Any]:
    """What identifies a picture for reuse: absolute path, size and modification time."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ItmatchError(f"{path}: cannot read the picture ({exc.strerror}); check the path") from None
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def key_tuple(row: dict[str, Any]) -> tuple[str, int, int]:
    """A picture's key (an ``image_key`` or an ``images.jsonl`` row) as a comparable tuple."""
    return row["path"], row["bytes"], row["mtime_ns"]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def finished_plan(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(config, ``images.jsonl`` records) of the finished output in ``out``, if any."""
    if not (out / INFO_FILE).is_file() or not (out / IMAGES_FILE).is_file():
        return None
    info = json.loads((out / INFO_FILE).read_text(encoding="utf-8"))
    return info.get("extractor"), _read_jsonl(out / IMAGES_FILE)


def shard_folders(out: Path, other_than: int | None = None) -> list[Path]:
    """The folders (finished, partial) of the shares of ``torchrun`` extractions into ``out``; with
    ``other_than`` W, not those of a run with W processes."""
    shares = sorted((out / SHARDS).glob("*"))
    if other_than is not None:
        shares = [share for share in shares if not share.name.endswith(f"-of-{other_than}")]
    return [folder for share in shares for folder in (share, share / PARTIAL)]


def is_finished(out: Path, config: dict[str, Any], keys: list[dict[str, Any]]) -> bool:
    """Whether ``out`` holds the finished features of exactly the pictures ``keys`` made with ``config``."""
    finished = finished_plan(out)
    if finished is None or finished[0] != config:
        return False
    return [key_tuple(r) for r in finished[1]] == [key_tuple(k) for k in keys]
