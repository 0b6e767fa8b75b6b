"""The search index folder: its format, and opening it for two-stage retrieval (``itmatch.search.build`` writes
it and appends to it).

::

    index.json            what the folder holds (models, segments, FAISS files); written last: the commit point
    models/               copies of the embedding model, the re-rankers and the vocabulary: the index needs nothing else
    images.N.faiss        FAISS index of the image embeddings (inner product = cosine: embeddings are L2-normalised)
    captions.N.faiss      the same for the caption embeddings (image→text search), when there are captions
    seg-00000/            one segment per `build` / `add`, rows in gallery order:
      features.npy          (n, R, D) region features, memory-mapped (explanations, re-encoding)
      boxes.npy             (n, R, 4) region boxes in [0, 1], when the source had them
      pictures.jsonl        per picture: path, width, height
      captions.txt          captions, one a line, and caption_image.npy (n_captions,) their picture (segment row)
      image_emb.npy         (n, d) image embeddings of the embedding model; caption_emb.npy (n_captions, d)
      reranker-K/FIELD.npy  each re-ranker's image encoding (e.g. regions (n, R, d), glob (n, d)), so that
                            re-ranking a shortlist is pair scoring only, not encoding

The FAISS indexes (``itmatch.search.vectors``: exact, IVF or IVF-PQ) are filled segment by segment from the
memory-mapped embeddings. ``build`` makes one segment per features folder. ``store_dtype`` ``float16`` halves the
region features and the re-rankers' encodings on disk (they are read back as float32). ``add`` writes a new
segment in the index's formats, adds its embeddings to the FAISS indexes (an IVF keeps its trained centroids and
codebooks) and rewrites ``index.json``; the FAISS files get a new generation number, so a reader never sees a FAISS
file that ``index.json`` does not describe.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat

FORMAT = "itmatch-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
# A segment's files (the module docstring); this module and ``itmatch.search.build`` spell them only through these.
FEATURES, BOXES, PICTURES, CAPTIONS = "features.npy", "boxes.npy", "pictures.jsonl", "captions.txt"
IMAGE_EMB, CAPTION_EMB, CAPTION_IMAGE = "image_emb.npy", "caption_emb.npy", "caption_image.npy"
SEGMENT_PREFIX = "seg-"


def segment_dir(number: int) -> str:
    """The folder of segment ``number``."""
    return f"{SEGMENT_PREFIX}{number:05d}"


def reranker_dir(reranker: int | str) -> str:
    """The folder (in a segment) of re-ranker ``reranker``'s stored encoding fields, or its model's name stem."""
    return f"reranker-{reranker}"


def faiss_file(side: str, generation: int | str) -> str:
    """The FAISS file of ``side`` ("images" or "captions") in its ``generation`` (a new one per `add`)."""
    return f"{side}.{generation}.faiss"


#: The index folder for :mod:`itmatch.fileio`'s replace rule (folders of older versions: by their names and
#: index.json).
FOLDER = FolderFormat(FORMAT, FORMAT_VERSION, legacy=(
    INDEX_FILE, faiss_file("images", "*"), faiss_file("captions", "*"), "models/embedder.*",
    f"models/{reranker_dir('*')}", "models/vocab.*",
    *(f"{SEGMENT_PREFIX}*/{name}" for name in (FEATURES, BOXES, PICTURES, CAPTIONS, CAPTION_IMAGE, IMAGE_EMB,
                                              CAPTION_EMB, f"{reranker_dir('*')}/*.npy"))),
    legacy_files=((INDEX_FILE, ("segments", "faiss")),))


class _Stack:
    """Rows of several memory-mapped arrays (one per segment) addressed by one global row number."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = [np.asarray(a) for a in arrays]  # plain views of the maps: indexing skips np.memmap's wrapper
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (k,) in that order; each segment's rows are read in ascending order."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.arrays) == 1:
            return self.arrays[0][ids]
        first = self.arrays[0]
        out = np.empty((len(ids), *first.shape[1:]), dtype=first.dtype)
        segment = np.searchsorted(self.offsets, ids, side="right") - 1
        for s in np.unique(segment):
            pick = np.flatnonzero(segment == s)
            local = ids[pick] - self.offsets[s]
            order = np.argsort(local, kind="stable")
            out[pick[order]] = self.arrays[s][local[order]]
        return out


class _Pictures(Sequence[dict[str, Any]]):
    """The entries of the segments' ``pictures.jsonl`` files, each parsed when asked for from the memory-mapped
    file: an index of millions of pictures keeps only their line offsets (8 bytes a picture) in memory."""

    CHUNK = 1 << 24  # bytes scanned for line ends at once

    def __init__(self, files: Sequence[Path]) -> None:
        self._maps = [np.memmap(f, mode="r", dtype=np.uint8) if f.stat().st_size else np.zeros(0, np.uint8)
                      for f in files]
        self._ends = [np.concatenate([np.flatnonzero(m[lo:lo + self.CHUNK] == 10) + lo
                                      for lo in range(0, len(m), self.CHUNK)] or [np.zeros(0, np.int64)])
                      for m in self._maps]
        self._offsets = np.cumsum([0] + [len(e) for e in self._ends])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, image: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= image < len(self):
            raise IndexError(image)
        segment = int(np.searchsorted(self._offsets, image, side="right") - 1)
        row = image - int(self._offsets[segment])
        ends = self._ends[segment]
        start = int(ends[row - 1]) + 1 if row else 0
        return json.loads(bytes(self._maps[segment][start:int(ends[row])]))


@dataclasses.dataclass
class Index:
    """An opened index folder: metadata, FAISS indexes, and memory-mapped per-picture arrays (see the module)."""

    directory: Path
    meta: dict[str, Any]
    image_faiss: Any
    caption_faiss: Any | None
    pictures: Sequence[dict[str, Any]]
    captions: list[str]
    caption_image: np.ndarray
    _arrays: dict[str, _Stack]
    _boxes: list[np.ndarray | None]

    @property
    def n_images(self) -> int:
        return len(self.pictures)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def features(self, ids: np.ndarray) -> np.ndarray:
        """Region features (k, R, D) float32 of pictures ``ids`` (stored float32 or float16)."""
        return self._arrays[FEATURES].take(ids).astype(np.float32, copy=False)

    def image_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return self._arrays[IMAGE_EMB].take(ids)

    def caption_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return self._arrays[CAPTION_EMB].take(ids)

    def encoding_fields(self, reranker: int, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Re-ranker ``reranker``'s stored image encoding of pictures ``ids``, field by field (float fields as
        float32, whatever ``store_dtype`` they are kept in)."""
        fields = {name: self._arrays[f"{reranker_dir(reranker)}/{name}.npy"].take(ids)
                  for name in self.meta["rerankers"][reranker]["fields"]}
        return {name: v.astype(np.float32) if v.dtype == np.float16 else v for name, v in fields.items()}

    def boxes(self, image: int) -> np.ndarray | None:
        """Region boxes (R, 4) of one picture (x1, y1, x2, y2 in [0, 1]), or None when its source had none."""
        stack = self._arrays[FEATURES]
        segment = int(np.searchsorted(stack.offsets, image, side="right") - 1)
        boxes = self._boxes[segment]
        return None if boxes is None else np.asarray(boxes[image - stack.offsets[segment]])

    def first_caption(self, image: int) -> str | None:
        """The first caption of picture ``image``, if it has one."""
        at = int(np.searchsorted(self.caption_image, image))
        return self.captions[at] if at < self.n_captions and self.caption_image[at] == image else None


def open_index(directory: str | Path, *, writable: bool = False) -> Index:
    """Open an index folder written by ``build_index``: its arrays and FAISS files memory-mapped (the memory a
    reader holds does not grow with the gallery), or the FAISS files read into memory when ``writable`` (to add
    to them)."""
    import faiss

    directory = Path(directory)
    meta_path = index_file(directory)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ItmatchError(f"{meta_path}: unreadable ({exc}); build the index again with `itmatch index build`"
                           ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ItmatchError(f"{meta_path}: not an itmatch index of format version {FORMAT_VERSION}; build it again")
    try:
        return _open(directory, meta, writable, faiss)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ItmatchError(f"{directory}: the index is damaged or incomplete ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else exc!r}); build it again with "
                           "`itmatch index build`") from None


def index_file(directory: Path) -> Path:
    """``directory``'s index.json, with a one-line error when it is not an index."""
    path = directory / INDEX_FILE
    if not path.is_file():
        raise ItmatchError(f"{directory}: not a search index (no {INDEX_FILE}); build one with `itmatch index build`")
    return path


def _open(directory: Path, meta: dict[str, Any], writable: bool, faiss: Any) -> Index:
    """``open_index``'s reading of the files ``meta`` names."""
    folders = [directory / s["dir"] for s in meta["segments"]]
    names = [FEATURES, IMAGE_EMB, CAPTION_EMB] + [f"{reranker_dir(k)}/{field}.npy" for k, entry in
                                                  enumerate(meta["rerankers"]) for field in entry["fields"]]
    arrays = {name: _Stack([np.load(f / name, mmap_mode="r") for f in folders]) for name in names}
    pictures = _Pictures([folder / PICTURES for folder in folders])
    captions: list[str] = []
    caption_image = []
    for folder, offset in zip(folders, arrays[FEATURES].offsets):
        text = (folder / CAPTIONS).read_text(encoding="utf-8")
        captions += text.split("\n")[:-1] if text else []
        caption_image.append(np.load(folder / CAPTION_IMAGE) + offset)
    boxes = [np.load(f / BOXES, mmap_mode="r") if (f / BOXES).is_file() else None for f in folders]
    files = meta["faiss"]
    # mapping FAISS files needs a faiss with IO_FLAG_MMAP_IFC (1.15 tested); an older one reads them into memory
    flags = 0 if writable else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    image_faiss = faiss.read_index(str(directory / files["images"]), flags)  # an IVF file keeps its nprobe
    caption_faiss = faiss.read_index(str(directory / files["captions"]), flags) if files.get("captions") else None
    return Index(directory, meta, image_faiss, caption_faiss, pictures, captions,
                 np.concatenate(caption_image).astype(np.int64), arrays, boxes)


@dataclasses.dataclass
class IndexModels:
    """The loaded models of an index: the embedder and the re-rankers, each with its vocabulary."""

    embedder: Any
    embedder_vocab: Any
    rerankers: list[tuple[Any, Any]]


def load_index_models(folder: Path, meta: dict[str, Any], device: str = "cpu") -> IndexModels:
    """The models stored in the index ``folder`` whose metadata is ``meta`` (their ``model_name`` is noted in
    ``meta``); the first stage must be an embedding model."""
    from itmatch.embeddings import require_embedding

    vocab = folder / meta["vocab"] if meta.get("vocab") else None
    embedder, embedder_vocab = _load_stored(folder, meta["embedder"], vocab, device)
    source = meta["embedder"].get("source", meta["embedder"]["file"])
    require_embedding(embedder, source, "the first stage", "pass it as --reranker instead")
    meta["embedder"]["model_name"] = embedder.model_name
    rerankers = []
    for entry in meta["rerankers"]:
        model, words = _load_stored(folder, entry, vocab, device)
        entry["model_name"] = model.model_name
        rerankers.append((model, words))
    return IndexModels(embedder, embedder_vocab, rerankers)


def _load_stored(folder: Path, entry: dict[str, Any], vocab: Path | None, device: str) -> tuple[Any, Any]:
    """A model stored in the index (its copy); an error about the file names the file it was copied from."""
    from itmatch.loading import load_models

    stored = folder / entry["file"]
    if not stored.is_file():
        raise ItmatchError(f"{folder}: the index is damaged or incomplete ({entry['file']} is missing); build it "
                           "again")
    try:
        return load_models([stored], vocab, device=device)
    except ItmatchError as exc:
        raise ItmatchError(str(exc).replace(str(stored), entry.get("source", str(stored)))) from None
