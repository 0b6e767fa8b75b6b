"""The dataset folder that `itmatch data build` writes (from a manifest, Tux Paint, ...) and that search, the demo
and training read: a precomp folder plus what own pictures add. This module owns the file names and their reading
and writing; nothing else spells them out::

    {split}_ims.npy  {split}_caps.txt  {split}_cap2img.npy   the precomp split (see itmatch.data.precomp)
    {split}_boxes.npy      (images, R, 4) region boxes, x1 y1 x2 y2 in [0, 1]
    {split}_images.jsonl   per feature row: {"row", "path", "width", "height", "source"}
    vocab.json             built from the train captions, threshold 1
    dataset.json           what was built from what (source, extractor, split sizes, skipped lines)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.data.precomp import SplitFiles
from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat, write_json, write_npy, write_text

DATASET_FILE = "dataset.json"
VOCAB_FILE = "vocab.json"
#: The dataset folder for :mod:`itmatch.fileio`'s replace rule (folders of older versions: by their names and
#: dataset.json).
FOLDER = FolderFormat("itmatch-dataset", 1, legacy=("*_ims.npy", "*_caps.txt", "*_cap2img.npy", "*_boxes.npy",
                                                    "*_images.jsonl", VOCAB_FILE, DATASET_FILE),
                      legacy_files=((DATASET_FILE, ("splits", "extractor")),))


def data_files(directory: str | os.PathLike, split: str) -> list[Path]:
    """The files of ``split`` in the dataset folder ``directory`` and those every split shares (whether they exist
    or not): what a command reading the split must never write over."""
    files = SplitFiles.of(directory, split)
    return [files.images, files.captions, files.cap2img, boxes_path(directory, split),
            pictures_path(directory, split), Path(directory) / VOCAB_FILE, Path(directory) / DATASET_FILE]


def dataset_files(directory: str | os.PathLike) -> list[Path]:
    """The existing files of ``directory`` named as a dataset's files are (any split's, ``vocab.json``,
    ``dataset.json``): in a folder without itmatch's marker (a downloaded precomp folder) what a single-file output
    must not replace."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and FOLDER.has_name(path.name))


def boxes_path(directory: str | os.PathLike, split: str) -> Path:
    return Path(directory) / f"{split}_boxes.npy"


def pictures_path(directory: str | os.PathLike, split: str) -> Path:
    return Path(directory) / f"{split}_images.jsonl"


# -- writing ----------------------------------------------------------------------------------------------------


def write_pictures(directory: str | os.PathLike, split: str, boxes: np.ndarray, pictures: list[dict[str, Any]]
                   ) -> None:
    """Write a split's region boxes (images, R, 4) and its picture listing (one dict per feature row, in order)."""
    write_npy(boxes_path(directory, split), boxes)
    write_text(pictures_path(directory, split), "".join(json.dumps(row) + "\n" for row in pictures))


def write_info(directory: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write ``dataset.json``; a builder writes it last, when everything else is in place."""
    write_json(Path(directory) / DATASET_FILE, info)


# -- reading ----------------------------------------------------------------------------------------------------


def read_info(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The contents of ``dataset.json``, or None for a plain precomp folder."""
    path = Path(directory) / DATASET_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_pictures(directory: str | os.PathLike, split: str) -> dict[int, dict[str, Any]] | None:
    """The picture listing of ``split`` keyed by feature row (``path`` as written, relative or absolute), or None
    when the folder has none (a plain precomp folder)."""
    listing = pictures_path(directory, split)
    if not listing.is_file():
        return None
    entries = [json.loads(line) for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {int(entry["row"]): entry for entry in entries}


def read_boxes(directory: str | os.PathLike, split: str, rows: np.ndarray, n_regions: int) -> np.ndarray | None:
    """Region boxes (len(rows), R, 4) of feature rows ``rows``, or None when the folder has no boxes file."""
    path = boxes_path(directory, split)
    if not path.is_file():
        return None
    boxes = np.load(path, mmap_mode="r")[rows]
    if boxes.shape != (len(rows), n_regions, 4):
        raise ItmatchError(f"{path}: shape {boxes.shape}, expected ({len(rows)}, {n_regions}, 4); "
                           "build the dataset again")
    return boxes
