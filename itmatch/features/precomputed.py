"""The ``precomputed`` extractor: region features a user already has, one file per picture.

For the picture ``photos/cat.jpg`` it reads ``cat.npz`` or ``cat.npy`` from ``features_dir`` (default: the
picture's own folder):

- ``.npy``: a plain (K, D) float array (no pickles); boxes are then unknown and stored as the whole picture;
- ``.npz`` as written by Bottom-Up-Attention extractors: features under ``x`` or ``features``; optional boxes in
  pixels under ``bbox`` or ``boxes`` (already normalised when every value is <= 1), optional ``image_w``/``image_h``,
  optional ``labels``/``objects_id`` and ``scores``/``objects_conf``.

K > R keeps the first R regions (these tools write them best first); K < R repeats the K regions in order until
there are R. The features are stored as they are (no box geometry is appended), so 2048-d Bottom-Up-Attention
features stay usable with checkpoints trained on Flickr30K/MS-COCO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.features.base import Regions, register_extractor
from itmatch.features.images import load_image

NAME = "precomputed"
_KEYS = ("x", "features", "bbox", "boxes", "image_w", "image_h", "labels", "objects_id", "scores", "objects_conf")


class PrecomputedExtractor:
    """Reads per-picture ``.npz``/``.npy`` region features (see the module docstring)."""

    name = NAME

    def __init__(self, regions: int = 36, features_dir: str | Path | None = None) -> None:
        if regions < 1:
            raise ItmatchError(f"--regions must be at least 1, got {regions}")
        self.regions = int(regions)
        self.features_dir = Path(features_dir).resolve() if features_dir is not None else None

    def config(self) -> dict[str, Any]:
        """Name, R and where the files are read from."""
        return {"name": self.name, "regions": self.regions,
                "features_dir": str(self.features_dir) if self.features_dir else None}

    def source(self, picture: Path) -> Path:
        """The feature file for ``picture`` (``.npz`` preferred over ``.npy``)."""
        folder = self.features_dir or picture.parent
        for suffix in (".npz", ".npy"):
            candidate = folder / f"{picture.stem}{suffix}"
            if candidate.is_file():
                return candidate
        raise ItmatchError(
            f"{picture}: no precomputed features {folder / picture.stem}.npz or .npy; write them there or pass "
            "--option features_dir=DIR"
        )

    def extract(self, paths: Sequence[Path]) -> list[Regions]:
        """Regions of each picture read from its feature file."""
        return [self._one(Path(p)) for p in paths]

    def _one(self, picture: Path) -> Regions:
        source = self.source(picture)
        try:
            loaded = np.load(source, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:  # read only the keys we use: BUTD's pickled 'info' entry stays unread
                    arrays = {key: loaded[key] for key in _KEYS if key in loaded.files}
            else:
                arrays = {"x": loaded}
        except (OSError, ValueError) as exc:
            raise ItmatchError(f"{source}: cannot read it as .npy/.npz without pickles ({exc}); re-save it with "
                               "numpy.save / numpy.savez") from None
        features = _first(arrays, "x", "features")
        if features is None or features.ndim != 2 or features.shape[0] == 0:
            raise ItmatchError(f"{source}: expected a (K, D) feature array (key 'x' or 'features' in a .npz)")
        k = features.shape[0]
        width, height = _size(arrays, picture)
        boxes = _first(arrays, "bbox", "boxes")
        if boxes is None:
            boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (k, 1))
        elif boxes.shape != (k, 4):
            raise ItmatchError(f"{source}: boxes have shape {boxes.shape}; expected ({k}, 4) like the features")
        elif boxes.max(initial=0.0) > 1.0:
            boxes = boxes / np.array([width, height, width, height], dtype=np.float64)
        labels = _first(arrays, "labels", "objects_id")
        scores = _first(arrays, "scores", "objects_conf")
        rows = np.arange(self.regions) % k
        return Regions(
            features=features[rows].astype(np.float32),
            boxes=np.clip(boxes[rows], 0.0, 1.0).astype(np.float32),
            labels=(labels.reshape(k)[rows] if labels is not None else np.full(self.regions, -1)).astype(np.int32),
            scores=(scores.reshape(k)[rows] if scores is not None else np.zeros(self.regions)).astype(np.float32),
            width=width,
            height=height,
        )


def _first(arrays: dict[str, np.ndarray], *keys: str) -> np.ndarray | None:
    for key in keys:
        if key in arrays:
            return np.asarray(arrays[key])
    return None


def _size(arrays: dict[str, np.ndarray], picture: Path) -> tuple[int, int]:
    """(width, height) from the file's ``image_w``/``image_h``, else by decoding the picture."""
    if "image_w" in arrays and "image_h" in arrays:
        return int(arrays["image_w"]), int(arrays["image_h"])
    height, width = load_image(picture).shape[:2]
    return width, height


@register_extractor(NAME)
def precomputed(regions: int = 36, features_dir: str | None = None) -> PrecomputedExtractor:
    """Per-picture precomputed features (``.npz``/``.npy``); see :mod:`itmatch.features.precomputed`."""
    return PrecomputedExtractor(regions=regions, features_dir=features_dir)
