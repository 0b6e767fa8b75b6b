"""The SCAN "precomp" format: pre-extracted region features plus captions, one split per file pair.

A precomp directory holds, per split (``train``, ``dev``, ``test``, ``testall``):

- ``{split}_ims.npy``: float32 ``(rows, R, D)`` region features (R=36, D=2048 for the released data);
- ``{split}_caps.txt``: one caption a line (UTF-8), captions grouped by image in image order;
- ``{split}_cap2img.npy`` (optional, int64 ``(n_captions,)``): the feature row of each caption's image, for data with
  any number of captions per image.

Without ``cap2img`` there are 5 captions per image: either one feature row per image (``rows * 5 == n_captions``) or,
as some releases do, every image repeated 5 times (``rows == n_captions``; image *i* is row ``5 * i``). Features are
memory-mapped, never read whole: MS-COCO's training features are ~33 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from itmatch.errors import ItmatchError, listed
from itmatch.fileio import atomic_path, new_npy, write_npy, write_text

SPLITS = ("train", "dev", "test", "testall")
CAPTIONS_PER_IMAGE = 5
#: The authors validate on the first 1,000 dev images (5,000 captions) to save time.
DEV_SUBSET_IMAGES = 1000


@dataclass(frozen=True)
class SplitFiles:
    """The file names of one split inside a precomp directory."""

    images: Path
    captions: Path
    cap2img: Path

    @classmethod
    def of(cls, directory: str | os.PathLike, split: str) -> SplitFiles:
        """The paths of ``split`` in ``directory`` (``split`` must be one of ``SPLITS``)."""
        if split not in SPLITS:
            raise ItmatchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        directory = Path(directory)
        return cls(
            directory / f"{split}_ims.npy", directory / f"{split}_caps.txt", directory / f"{split}_cap2img.npy"
        )


@dataclass(frozen=True)
class PrecompSplit:
    """One split: memory-mapped features, captions, and which image each caption describes.

    ``features``: ``(rows, R, D)`` memmap; ``caption_image``: int64 ``(n_captions,)`` image index per caption,
    non-decreasing, covering ``0..n_images-1``; ``image_rows``: int64 ``(n_images,)`` feature row of each image.
    """

    directory: Path
    split: str
    features: np.ndarray
    captions: list[str]
    caption_image: np.ndarray
    image_rows: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_rows)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def n_regions(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    def digest(self) -> str:
        """A fingerprint of the split: its captions, which image each describes, and the features' shape and a
        few of their rows (first, middle, last image; reading all of them would take minutes). Two splits with
        equal counts but other captions or other features differ in it (a resumed run checks its data by it)."""
        hash_ = hashlib.sha256("\n".join(self.captions).encode())
        sampled = self.image_rows[[0, self.n_images // 2, self.n_images - 1]] if self.n_images else []
        for part in (self.caption_image, self.image_rows, np.asarray(self.features.shape),
                     *(np.asarray(self.features[row]) for row in sampled)):
            hash_.update(np.ascontiguousarray(part).tobytes())
        return hash_.hexdigest()[:16]

    def image_features(self, index: np.ndarray) -> np.ndarray:
        """Float32 ``(k, R, D)`` features of images ``index`` (``(k,)`` ints); rows are read in ascending order."""
        rows = self.image_rows[np.asarray(index, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.n_regions, self.feature_dim), dtype=np.float32)
        out[order] = self.features[rows[order]]
        broken = nonfinite_rows(out)
        if broken.any():
            raise ItmatchError(f"{SplitFiles.of(self.directory, self.split).images}: feature rows "
                               f"{listed(sorted(set(rows[broken].tolist())))} hold NaN or infinite values; extract "
                               "those pictures again or drop them")
        return out


def nonfinite_rows(features: np.ndarray) -> np.ndarray:
    """(k,) bool: which of the (k, R, D) ``features`` hold NaN or infinity. A sum per row first (one pass, no
    temporary the size of the batch); the exact test only when a sum is not finite."""
    sums = features.sum(axis=(1, 2))
    if np.isfinite(sums).all():
        return np.zeros(len(features), dtype=bool)
    return ~np.isfinite(features).all(axis=(1, 2))


@dataclass
class ImageRows:
    """Lazy (n, R, D) view of chosen images of a split: slicing reads only those rows of the memmap."""

    split: PrecompSplit
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.split.image_features(self.images[index])


def load_split(directory: str | os.PathLike, split: str, *, dev_subset: bool = False) -> PrecompSplit:
    """Open ``split`` of the precomp ``directory``; ``dev_subset`` keeps the authors' first 1,000 dev images.

    Bad files (missing, wrong shape, empty caption, counts that do not match) raise ``ItmatchError`` naming them.
    """
    if dev_subset and split != "dev":
        raise ItmatchError(f"dev_subset applies to the dev split only, not {split!r}")
    files = SplitFiles.of(directory, split)
    for path in (files.images, files.captions):
        if not path.is_file():
            raise ItmatchError(
                f"{path}: file not found; a precomp split needs {files.images.name} and {files.captions.name} "
                f"(and {files.cap2img.name} when images have other than 5 captions)"
            )
    features = open_features(files.images)
    captions = read_captions(files.captions)
    cap2img = _read_cap2img(files.cap2img) if files.cap2img.is_file() else None
    caption_image, image_rows = _caption_layout(features, len(captions), cap2img, files)
    if dev_subset:
        n_images = min(DEV_SUBSET_IMAGES, len(image_rows))
        n_captions = int(np.searchsorted(caption_image, n_images))
        captions, caption_image, image_rows = captions[:n_captions], caption_image[:n_captions], image_rows[:n_images]
    return PrecompSplit(Path(directory), split, features, captions, caption_image, image_rows)


def open_features(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` feature file and check it is a non-empty 3-D float array ``(rows, R, D)``."""
    try:
        features = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        features = None
    if not isinstance(features, np.ndarray):  # also catches an .npz archive saved under the .npy name
        raise ItmatchError(f"{path}: not a readable .npy array; expected float32 (images, regions, dim)")
    if features.ndim != 3 or 0 in features.shape:
        raise ItmatchError(f"{path}: features have shape {features.shape}; expected a 3-D (images, regions, dim) array")
    if not np.issubdtype(features.dtype, np.floating):
        raise ItmatchError(f"{path}: features have dtype {features.dtype}; expected float32")
    return features


def read_captions(path: str | os.PathLike) -> list[str]:
    """Read one caption a line (UTF-8, line endings stripped); an empty line raises ``ItmatchError`` with file:line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ItmatchError(f"{path}: caption file not found") from None
    except IsADirectoryError:
        raise ItmatchError(f"{path}: is a folder; give a caption file (one caption a line)") from None
    except UnicodeDecodeError as exc:
        raise ItmatchError(f"{path}: not UTF-8 text ({exc}); save the captions as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    captions = [line.removesuffix("\r") for line in lines]
    for number, caption in enumerate(captions, start=1):
        if not caption.strip():
            raise ItmatchError(f"{path}:{number}: empty caption; every line must hold one caption")
    if not captions:
        raise ItmatchError(f"{path}: no captions")
    return captions


def _read_cap2img(path: Path) -> np.ndarray:
    try:
        cap2img = np.load(path)
    except (ValueError, OSError):
        cap2img = None
    if not isinstance(cap2img, np.ndarray):
        raise ItmatchError(f"{path}: not a readable .npy array; expected int64 (n_captions,)")
    if cap2img.ndim != 1 or not np.issubdtype(cap2img.dtype, np.integer):
        raise ItmatchError(f"{path}: shape {cap2img.shape} dtype {cap2img.dtype}; expected int64 (n_captions,)")
    return cap2img.astype(np.int64)


def _caption_layout(
    features: np.ndarray, n_captions: int, cap2img: np.ndarray | None, files: SplitFiles
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(caption_image, image_rows)`` for ``n_captions`` captions over ``features``' rows.

    ``cap2img`` (feature row per caption) wins when given; otherwise the 5-captions-per-image layouts are detected
    from the counts. Anything inconsistent raises ``ItmatchError`` naming ``files``.
    """
    n_rows = features.shape[0]
    if cap2img is not None:
        return _layout_from_cap2img(cap2img, n_rows, n_captions, files.cap2img), np.arange(n_rows, dtype=np.int64)
    caption_image = np.arange(n_captions, dtype=np.int64) // CAPTIONS_PER_IMAGE
    if n_captions == CAPTIONS_PER_IMAGE * n_rows:
        return caption_image, np.arange(n_rows, dtype=np.int64)
    if n_captions == n_rows and n_rows % CAPTIONS_PER_IMAGE == 0:
        _check_repeated(features, files.images)
        return caption_image, np.arange(0, n_rows, CAPTIONS_PER_IMAGE, dtype=np.int64)
    raise ItmatchError(
        f"{files.images} has {n_rows} images but {files.captions} has {n_captions} captions; expected "
        f"{CAPTIONS_PER_IMAGE} captions per image ({CAPTIONS_PER_IMAGE * n_rows} captions, or each image repeated "
        f"{CAPTIONS_PER_IMAGE} times), or write {files.cap2img.name} giving each caption's image row"
    )


def _layout_from_cap2img(cap2img: np.ndarray, n_rows: int, n_captions: int, path: Path) -> np.ndarray:
    """Check that ``cap2img`` maps captions, grouped in image order, onto every feature row."""
    if len(cap2img) != n_captions:
        raise ItmatchError(f"{path}: has {len(cap2img)} entries but there are {n_captions} captions; need one each")
    if cap2img.min() < 0 or cap2img.max() >= n_rows:
        raise ItmatchError(f"{path}: image rows must lie in 0..{n_rows - 1}, found {cap2img.min()}..{cap2img.max()}")
    if np.any(np.diff(cap2img) < 0):
        first = int(np.argmax(np.diff(cap2img) < 0)) + 1
        raise ItmatchError(f"{path}: captions must be grouped by image in image order; caption {first} goes back")
    missing = np.setdiff1d(np.arange(n_rows), cap2img)
    if len(missing):
        raise ItmatchError(f"{path}: image row {missing[0]} has no caption; every image needs at least one")
    return cap2img


def _check_repeated(features: np.ndarray, path: Path) -> None:
    """Cheaply confirm the repeated layout: the first image's 5 rows must be identical."""
    block = np.asarray(features[:CAPTIONS_PER_IMAGE])
    if not (block == block[0]).all():
        raise ItmatchError(
            f"{path}: as many feature rows as captions, but rows 0-{CAPTIONS_PER_IMAGE - 1} differ, so images are not "
            f"repeated {CAPTIONS_PER_IMAGE} times; write a cap2img.npy giving each caption's image row"
        )


@contextlib.contextmanager
def features_writer(directory: str | os.PathLike, split: str, shape: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """Yield a float32 ``shape`` memmap to fill; on success it becomes ``{split}_ims.npy`` (atomic rename)."""
    path = SplitFiles.of(directory, split).images
    with atomic_path(path) as tmp:
        # The mapping shares the page cache, so the renamed file is complete without an explicit flush.
        yield new_npy(tmp, np.float32, shape)


def write_captions(
    directory: str | os.PathLike, split: str, captions: list[str], caption_image: np.ndarray | None = None
) -> None:
    """Write the captions of ``split`` beside its existing ``{split}_ims.npy``.

    ``caption_image`` gives each caption's feature row; it is written as ``cap2img.npy`` only when the data is not
    the plain 5-captions-per-row layout (and a stale ``cap2img.npy`` is removed when it is).
    """
    files = SplitFiles.of(directory, split)
    cap2img = _validate(open_features(files.images), captions, caption_image, files)
    write_text(files.captions, "".join(caption + "\n" for caption in captions))
    if cap2img is None:
        files.cap2img.unlink(missing_ok=True)
    else:
        write_npy(files.cap2img, cap2img)


def write_split(
    directory: str | os.PathLike,
    split: str,
    features: np.ndarray,
    captions: list[str],
    caption_image: np.ndarray | None = None,
) -> None:
    """Write ``split`` in the precomp format: ``features`` ``(rows, R, D)``, ``captions`` and, optionally, each
    caption's feature row (``caption_image``, ``(n_captions,)``).

    Everything is checked before anything is written, with the same rules ``load_split`` applies.
    """
    files = SplitFiles.of(directory, split)
    features = np.asarray(features)
    if features.ndim != 3 or 0 in features.shape:
        raise ItmatchError(f"features for {files.images} have shape {features.shape}; expected (images, regions, dim)")
    _validate(features, captions, caption_image, files)
    write_npy(files.images, features.astype(np.float32, copy=False))
    write_captions(directory, split, captions, caption_image)


def _validate(
    features: np.ndarray, captions: list[str], caption_image: np.ndarray | None, files: SplitFiles
) -> np.ndarray | None:
    """Check captions and layout; return the ``cap2img`` array to write, or None for the plain 5-per-row layout."""
    for number, caption in enumerate(captions, start=1):
        if not caption.strip() or "\n" in caption or "\r" in caption:
            raise ItmatchError(f"{files.captions}: caption {number} is empty or spans lines ({caption!r})")
    if not captions:
        raise ItmatchError(f"{files.captions}: no captions to write")
    cap2img = None if caption_image is None else np.asarray(caption_image, dtype=np.int64)
    _caption_layout(features, len(captions), cap2img, files)
    plain = np.arange(len(captions)) // CAPTIONS_PER_IMAGE
    if cap2img is not None and len(captions) == CAPTIONS_PER_IMAGE * len(features) and np.array_equal(cap2img, plain):
        return None
    return cap2img
