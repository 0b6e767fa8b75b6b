"""The pictures an index is built from: an `itmatch extract` features folder, or one split of a dataset folder.

Both read the same way: ``features(ids)`` (k, R, D) float32 rows read from the memory-mapped arrays, and per
picture its region boxes, file path and size (when known), plus the captions (datasets only) that image→text
search returns, and the extractor settings that made the features (so a query picture is read the same way).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from itmatch.data.folder import read_boxes, read_info, read_pictures
from itmatch.data.precomp import SPLITS, SplitFiles, load_split, nonfinite_rows
from itmatch.errors import ItmatchError


@dataclasses.dataclass
class Gallery:
    """Pictures with their region features; ``captions[j]`` describes picture ``caption_image[j]``.

    ``read_features(ids)`` gives (k, R, D) float32 for ``ids`` (k,); ``boxes`` (n, R, 4) or None;
    ``pictures[i]`` holds ``path``/``width``/``height`` where known; ``extractor`` the extractor's config or None;
    ``source`` describes where it came from (stored in the index).
    """

    n_images: int
    n_regions: int
    dim: int
    read_features: Callable[[np.ndarray], np.ndarray]
    boxes: np.ndarray | None
    pictures: list[dict[str, Any]]
    captions: list[str]
    caption_image: np.ndarray
    extractor: dict[str, Any] | None
    source: dict[str, Any]

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Features (k, R, D) float32 of a slice of the pictures: a gallery reads like an (n, R, D) array."""
        return self.read_features(np.arange(*rows.indices(self.n_images)))

    def subset(self, ids: np.ndarray) -> Gallery:
        """The pictures ``ids`` (sorted, unique) of this gallery, with their captions."""
        ids = np.asarray(ids, dtype=np.int64)
        new_id = np.full(self.n_images, -1, dtype=np.int64)
        new_id[ids] = np.arange(len(ids))
        kept = np.flatnonzero(new_id[self.caption_image] >= 0) if len(self.caption_image) else np.zeros(0, np.int64)
        return dataclasses.replace(
            self, n_images=len(ids), read_features=lambda rows: self.read_features(ids[rows]),
            boxes=None if self.boxes is None else np.asarray(self.boxes[ids]),
            pictures=[self.pictures[i] for i in ids], captions=[self.captions[j] for j in kept],
            caption_image=new_id[self.caption_image[kept]])


def check_image_id(image: int, n_images: int) -> int:
    """``image`` if it is one of ``n_images`` pictures, else an error naming the valid ids."""
    if not 0 <= image < n_images:
        raise ItmatchError(f"no image {image} here; ids run from 0 to {n_images - 1}")
    return image


def already_in(pictures: Sequence[dict[str, Any]], indexed: Sequence[dict[str, Any]]) -> np.ndarray:
    """(len(pictures),) bool: which ``pictures`` are among ``indexed``, keyed as `extract` keys them (path, size,
    modification time; by path alone where one side does not know the size and time). Pictures without a file are
    never the same."""
    known: dict[str, set[tuple[Any, Any]]] = {}
    for picture in indexed:
        if picture.get("path"):
            known.setdefault(picture["path"], set()).add((picture.get("bytes"), picture.get("mtime_ns")))
    found = np.zeros(len(pictures), dtype=bool)
    for i, picture in enumerate(pictures):
        stamps = known.get(picture.get("path") or "")
        stamp = (picture.get("bytes"), picture.get("mtime_ns"))
        found[i] = stamps is not None and (stamp in stamps or None in stamp or any(None in s for s in stamps))
    return found


#: ``itmatch.features.store.INFO_FILE`` and ``PARTIAL``, spelled out: importing the features package would import
#: OpenCV, which indexing a dataset folder does not need (a test keeps them equal).
FEATURES_INFO, FEATURES_PARTIAL = "extractor.json", ".partial"


def open_gallery(directory: str | Path, split: str | None = None) -> Gallery:
    """The pictures of an `itmatch extract` folder (``split`` None) or of ``split`` of a dataset folder."""
    directory = Path(directory)
    if (directory / FEATURES_INFO).is_file():
        if split is not None:
            raise ItmatchError(f"{directory}: an `itmatch extract` folder has no splits; leave out --split")
        return _features_folder(directory)
    if split is None:
        if (directory / FEATURES_PARTIAL).is_dir():
            raise ItmatchError(f"{directory}: an `itmatch extract` folder whose extraction did not finish; run the "
                               "same `itmatch extract` again to finish it (it resumes)")
        if any(SplitFiles.of(directory, name).images.is_file() for name in SPLITS):
            raise ItmatchError(f"{directory}: a dataset folder; say which split to index with --split (e.g. test)")
        raise ItmatchError(f"{directory}: neither an `itmatch extract` folder (extractor.json) nor a dataset "
                           "folder ({split}_ims.npy); extract features or build a dataset first")
    return _dataset_split(directory, split)


def _features_folder(directory: Path) -> Gallery:
    from itmatch.features import open_features

    feature_set = open_features(directory)
    keep = np.flatnonzero(feature_set.ok)  # pictures that could not be decoded have no features
    if not len(keep):
        raise ItmatchError(f"{directory}: no picture in it could be decoded; nothing to index")
    pictures = [_picture(feature_set.images[i], directory) for i in keep]
    _, regions, dim = feature_set.features.shape

    def read_features(ids: np.ndarray) -> np.ndarray:
        features = np.asarray(feature_set.features[keep[ids]], np.float32)
        broken = np.asarray(ids)[nonfinite_rows(features)]
        if len(broken):
            raise ItmatchError(f"{directory}: the features of {len(broken)} picture(s) ({pictures[broken[0]]['path']}"
                               f"{', ...' if len(broken) > 1 else ''}) hold NaN or infinite values; check the "
                               "extractor and extract them again")
        return features

    return Gallery(len(keep), regions, dim, read_features,
                   np.asarray(feature_set.boxes[keep]), pictures, [], np.zeros(0, np.int64),
                   feature_set.info.get("extractor"), {"kind": "features", "path": str(directory.absolute())})


def _dataset_split(directory: Path, split: str) -> Gallery:
    data = load_split(directory, split)
    rows = data.image_rows
    boxes = read_boxes(directory, split, rows, data.n_regions)
    by_row = {row: _picture(entry, directory) for row, entry in (read_pictures(directory, split) or {}).items()}
    extractor = (read_info(directory) or {}).get("extractor")
    return Gallery(data.n_images, data.n_regions, data.feature_dim, data.image_features, boxes,
                   [by_row.get(int(row), {}) for row in rows], list(data.captions), data.caption_image,
                   extractor, {"kind": "dataset", "path": str(directory.absolute()), "split": split})


def _picture(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    """``path`` (absolute), ``width``, ``height`` (and ``bytes``, ``mtime_ns`` where listed) of a listing entry."""
    path = Path(entry["path"])
    return {"path": str(path if path.is_absolute() else (base / path).absolute()),
            "width": entry.get("width"), "height": entry.get("height"),
            **{key: entry[key] for key in ("bytes", "mtime_ns") if key in entry}}
