"""The search index folder: what two-stage retrieval reads, written once and appended to.

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
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat, atomic_dir, check_folder, folder_lock, mark_folder, remove_stale, write_json
from itmatch.search.gallery import Gallery, already_in, open_gallery
from itmatch.search.vectors import choose_kind, make_faiss, save_faiss

FORMAT = "itmatch-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
#: The index folder for :mod:`itmatch.fileio`'s replace rule (folders of older versions: by their names and
#: index.json).
FOLDER = FolderFormat(FORMAT, FORMAT_VERSION, legacy=(INDEX_FILE, "models", "images.*.faiss", "captions.*.faiss",
                                                      "seg-*"), legacy_files=((INDEX_FILE, ("segments", "faiss")),))
STORE_DTYPES = ("float32", "float16")
BLOCK = 256  # pictures encoded at once while building


def check_store_dtype(store_dtype: str) -> np.dtype:
    """The numpy dtype of ``--store-dtype`` (float32 or float16)."""
    if store_dtype not in STORE_DTYPES:
        raise ItmatchError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}")
    return np.dtype(store_dtype)


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
        return self._arrays["features"].take(ids).astype(np.float32, copy=False)

    def image_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return self._arrays["image_emb"].take(ids)

    def caption_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return self._arrays["caption_emb"].take(ids)

    def encoding_fields(self, reranker: int, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Re-ranker ``reranker``'s stored image encoding of pictures ``ids``, field by field (float fields as
        float32, whatever ``store_dtype`` they are kept in)."""
        fields = {name: self._arrays[f"reranker-{reranker}/{name}"].take(ids)
                  for name in self.meta["rerankers"][reranker]["fields"]}
        return {name: v.astype(np.float32) if v.dtype == np.float16 else v for name, v in fields.items()}

    def boxes(self, image: int) -> np.ndarray | None:
        """Region boxes (R, 4) of one picture (x1, y1, x2, y2 in [0, 1]), or None when its source had none."""
        stack = self._arrays["features"]
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
    meta_path = _meta_path(directory)
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


def _meta_path(directory: Path) -> Path:
    """``directory``'s index.json, with a one-line error when it is not an index."""
    meta_path = directory / INDEX_FILE
    if not meta_path.is_file():
        raise ItmatchError(f"{directory}: not a search index (no {INDEX_FILE}); build one with `itmatch index build`")
    return meta_path


def _open(directory: Path, meta: dict[str, Any], writable: bool, faiss: Any) -> Index:
    """``open_index``'s reading of the files ``meta`` names."""
    folders = [directory / s["dir"] for s in meta["segments"]]
    names = ["features", "image_emb", "caption_emb"] + [f"reranker-{k}/{field}" for k, entry in
                                                       enumerate(meta["rerankers"]) for field in entry["fields"]]
    arrays = {name: _Stack([np.load(f / f"{name}.npy", mmap_mode="r") for f in folders]) for name in names}
    pictures = _Pictures([folder / "pictures.jsonl" for folder in folders])
    captions: list[str] = []
    caption_image = []
    for folder, offset in zip(folders, arrays["features"].offsets):
        text = (folder / "captions.txt").read_text(encoding="utf-8")
        captions += text.split("\n")[:-1] if text else []
        caption_image.append(np.load(folder / "caption_image.npy") + offset)
    boxes = [np.load(f / "boxes.npy", mmap_mode="r") if (f / "boxes.npy").is_file() else None for f in folders]
    files = meta["faiss"]
    # mapping FAISS files needs a faiss with IO_FLAG_MMAP_IFC (1.15 tested); an older one reads them into memory
    flags = 0 if writable else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    image_faiss = faiss.read_index(str(directory / files["images"]), flags)  # an IVF file keeps its nprobe
    caption_faiss = faiss.read_index(str(directory / files["captions"]), flags) if files.get("captions") else None
    return Index(directory, meta, image_faiss, caption_faiss, pictures, captions,
                 np.concatenate(caption_image).astype(np.int64), arrays, boxes)


def build_index(features: str | Path | Sequence[str | Path], out: str | Path, *, embedder: str | Path,
                rerankers: Sequence[str | Path] = (), split: str | None = None, vocab: str | Path | None = None,
                index_type: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                m: int | None = None, store_dtype: str = "float32", device: str = "cpu",
                progress: bool = False) -> dict[str, Any]:
    """Index the pictures of ``features`` -- one folder, or several (e.g. the shards of a large extraction),
    each its own segment; ``split`` of dataset folders -- into the new folder ``out``.

    ``embedder`` is an embedding model (VSE, HREM) that shortlists; ``rerankers`` (SGR, SAF, TSHSR, ...) re-rank
    the shortlist, their scores averaged. The models (and ``vocab``, for checkpoints without one) are copied into
    the index. ``index_type``/``nlist``/``nprobe``/``m``: the FAISS index (module docstring); ``store_dtype``:
    float32, or float16 for the stored region features and re-ranker encodings. Built in a temporary folder and
    renamed: ``out`` is never half-written, and an existing ``out`` is replaced only when it is an index that holds
    nothing but what itmatch wrote. Returns the metadata.
    """
    out = Path(out)
    check_folder(out, FOLDER)  # before any work (checked again when the new index takes its place)
    dtype = check_store_dtype(store_dtype)
    choose_kind(0, index_type)  # a wrong --index-type is reported before any work
    sources = [features] if isinstance(features, (str, Path)) else list(features)
    if not sources:
        raise ItmatchError("no features to index; give --features FOLDER (repeat it for several folders)")
    galleries = [open_gallery(source, split) for source in sources]
    for k, gallery in enumerate(galleries):
        if any(_same_place(earlier.source, gallery.source) for earlier in galleries[:k]):
            raise ItmatchError(f"{sources[k]}: given twice as --features; each folder is indexed once")
    first = galleries[0]
    for source, gallery in zip(sources[1:], galleries[1:]):
        _check_compatible(source, gallery, first.n_regions, first.dim, first.extractor)
    n_images = sum(g.n_images for g in galleries)
    kind = choose_kind(n_images, index_type)
    with atomic_dir(out, FOLDER) as tmp:
        meta = _store_models(tmp, embedder, rerankers, vocab)
        models = load_index_models(tmp, meta, device)
        segments = [_write_segment(tmp / f"seg-{k:05d}", gallery, models, device, progress, dtype)
                    for k, gallery in enumerate(galleries)]
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, regions=first.n_regions, dim=first.dim,
                    extractor=first.extractor, segments=segments, n_images=n_images,
                    n_captions=sum(len(g.captions) for g in galleries), index_type=index_type,
                    store_dtype=store_dtype)
        meta["rerankers"] = [{**entry, "fields": fields}
                             for entry, fields in zip(meta["rerankers"], segments[0]["fields"])]
        for segment in segments:
            segment.pop("fields")
        meta["faiss"] = _write_faiss(tmp, 1, kind, nlist, nprobe, [tmp / s["dir"] for s in segments], m)
        write_json(tmp / INDEX_FILE, meta)
    return meta


def _check_compatible(source: str | Path, gallery: Gallery, regions: int, dim: int,
                      extractor: dict[str, Any] | None) -> None:
    """``gallery`` must hold features like the index's: R regions of D dims, made by the same extractor."""
    if (gallery.n_regions, gallery.dim) != (regions, dim):
        raise ItmatchError(f"{source}: {gallery.n_regions} regions × {gallery.dim} dims per picture, but the index "
                           f"holds {regions} × {dim}; extract them with the index's extractor")
    if gallery.extractor and extractor and gallery.extractor != extractor:
        raise ItmatchError(f"{source}: made by another extractor or settings ({gallery.extractor}) than the "
                           f"index ({extractor}); extract them the same way")


def add_to_index(index_dir: str | Path, features: str | Path, *, split: str | None = None, device: str = "cpu",
                 progress: bool = False) -> dict[str, Any]:
    """Append the pictures of ``features`` (``split`` of a dataset) to the index ``index_dir`` as a new segment,
    encoded with the index's own models; nothing already indexed is read again, and pictures already in the index
    (same file, size and modification time, as `extract` keys them) are skipped. Returns the new metadata plus
    ``skipped``: how many pictures were already there."""
    index_dir = Path(index_dir)
    _meta_path(index_dir)  # an index, before it is locked (and read, under the lock)
    with folder_lock(index_dir, "--index"):  # one writer at a time: a second `add` would take the same segment
        return _add(index_dir, features, split, device, progress)


def _add(index_dir: Path, features: str | Path, split: str | None, device: str, progress: bool) -> dict[str, Any]:
    """``add_to_index``'s work, with the index locked."""
    index = open_index(index_dir, writable=True)
    meta = index.meta
    remove_stale(index_dir)  # what a killed `add` left
    gallery = open_gallery(features, split)
    holders = [s["dir"] for s in meta["segments"] if _same_place(s.get("source"), gallery.source)]
    if holders and not all(picture.get("path") for picture in gallery.pictures):
        raise ItmatchError(f"{features}: already in the index ({holders[0]}), and its pictures have no file names "
                           "to tell new ones by; nothing added")
    new = ~already_in(gallery.pictures, index.pictures)
    skipped = int((~new).sum())
    if not new.any():
        return {**meta, "skipped": skipped}
    gallery = gallery.subset(np.flatnonzero(new)) if skipped else gallery
    _check_compatible(features, gallery, meta["regions"], meta["dim"], meta["extractor"])
    models = load_index_models(index_dir, meta, device)
    number = len(meta["segments"])
    name = f"seg-{number:05d}"
    dtype = check_store_dtype(meta.get("store_dtype", "float32"))  # the index's own format
    mark_folder(index_dir, FOLDER, claim=[name, f"images.{number + 1}.faiss", f"captions.{number + 1}.faiss"])
    with atomic_dir(index_dir / name) as tmp:  # replaces a segment left behind by an interrupted `add`
        segment = _write_segment(tmp, gallery, models, device, progress, dtype)
    segment.pop("fields")
    n_images = meta["n_images"] + gallery.n_images
    kind = choose_kind(n_images, meta["index_type"])
    folders = [index_dir / s["dir"] for s in meta["segments"]] + [index_dir / name]
    old_files = [meta["faiss"][key] for key in ("images", "captions") if meta["faiss"].get(key)]
    if kind == meta["faiss"]["kind"]:
        faiss_meta = _extend_faiss(index_dir, number + 1, index, folders[-1])
    else:
        faiss_meta = _write_faiss(index_dir, number + 1, kind, None, None, folders)
    meta = {**meta, "segments": [*meta["segments"], {**segment, "dir": name}], "n_images": n_images,
            "n_captions": meta["n_captions"] + len(gallery.captions), "faiss": faiss_meta}
    write_json(index_dir / INDEX_FILE, meta)
    for old in old_files:
        (index_dir / old).unlink(missing_ok=True)
    return {**meta, "skipped": skipped}


def _same_place(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two gallery sources are the same folder (links resolved) and split."""
    return a is not None and a.get("split") == b.get("split") and a.get("kind") == b.get("kind") \
        and Path(a["path"]).resolve() == Path(b["path"]).resolve()


def _store_models(folder: Path, embedder: str | Path, rerankers: Sequence[str | Path],
                  vocab: str | Path | None) -> dict[str, Any]:
    """Copy the model files into ``folder/models``; their entries for the metadata."""
    models = folder / "models"
    models.mkdir()

    def store(source: str | Path, name: str) -> dict[str, Any]:
        source = Path(source)
        if not source.is_file():
            raise ItmatchError(f"{source}: no such checkpoint file")
        target = models / f"{name}{source.suffix or '.pt'}"
        shutil.copyfile(source, target)
        return {"file": str(target.relative_to(folder)), "source": str(source.absolute())}

    meta: dict[str, Any] = {"embedder": store(embedder, "embedder"),
                            "rerankers": [store(path, f"reranker-{k}") for k, path in enumerate(rerankers)],
                            "vocab": None}
    if vocab is not None:
        meta["vocab"] = store(vocab, "vocab")["file"]
    return meta


@dataclasses.dataclass
class IndexModels:
    """The loaded models of an index: the embedder and the re-rankers, each with its vocabulary."""

    embedder: Any
    embedder_vocab: Any
    rerankers: list[tuple[Any, Any]]


def load_index_models(folder: Path, meta: dict[str, Any], device: str = "cpu") -> IndexModels:
    """The models stored in the index ``folder`` whose metadata is ``meta`` (their ``model_name`` is noted in
    ``meta``); the first stage must be an embedding model."""
    from itmatch.models.registry import embedding_models

    vocab = folder / meta["vocab"] if meta.get("vocab") else None
    embedder, embedder_vocab = _load_stored(folder, meta["embedder"], vocab, device)
    source = meta["embedder"].get("source", meta["embedder"]["file"])
    if not embedder.is_embedding:
        raise ItmatchError(f"{source}: the first stage needs an embedding model ({', '.join(embedding_models())}), not "
                           f"{embedder.model_name or type(embedder).__name__}; pass it as --reranker instead")
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


def _write_segment(folder: Path, gallery: Gallery, models: IndexModels, device: str, progress: bool,
                   dtype: np.dtype = np.dtype(np.float32)) -> dict[str, Any]:
    """Write one segment (see the module docstring) into the new folder ``folder``, region features and
    re-ranker encodings as ``dtype``; its metadata entry, with ``fields``: each re-ranker's encoding field
    names."""
    import torch

    from itmatch.loading import caption_tokens
    from itmatch.scoring import feature_batches, text_batches

    folder.mkdir(parents=True, exist_ok=True)
    n = gallery.n_images
    features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=dtype,
                                         shape=(n, gallery.n_regions, gallery.dim))
    dim = models.embedder.config.embed_size
    image_emb = np.lib.format.open_memmap(folder / "image_emb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    encodings: list[dict[str, np.ndarray]] = [{} for _ in models.rerankers]
    with torch.inference_mode():
        for ids, block in feature_batches(gallery, BLOCK, progress, desc="index pictures"):
            features[ids] = block.numpy()
            feats = block.to(device)
            image_emb[ids] = models.embedder.encode_images(feats).emb.float().cpu().numpy()
            for k, (model, _) in enumerate(models.rerankers):
                _store_encoding(folder / f"reranker-{k}", encodings[k], model.encode_images(feats), ids, n, dtype)
        caption_emb = np.zeros((len(gallery.captions), dim), dtype=np.float32)
        tokens = caption_tokens(models.embedder, models.embedder_vocab, gallery.captions)
        for index, chunk in text_batches(models.embedder, tokens, torch.device(device), progress=progress):
            caption_emb[index] = chunk.emb.float().cpu().numpy()
    for array in [features, image_emb, *(a for group in encodings for a in group.values())]:
        array.flush()
    np.save(folder / "caption_emb.npy", caption_emb)
    np.save(folder / "caption_image.npy", np.asarray(gallery.caption_image, dtype=np.int64))
    (folder / "captions.txt").write_text("".join(f"{c}\n" for c in gallery.captions), encoding="utf-8")
    (folder / "pictures.jsonl").write_text("".join(json.dumps(p) + "\n" for p in gallery.pictures), encoding="utf-8")
    if gallery.boxes is not None:
        np.save(folder / "boxes.npy", np.asarray(gallery.boxes, dtype=np.float32))
    return {"dir": folder.name, "images": n, "captions": len(gallery.captions), "source": gallery.source,
            "fields": [list(group) for group in encodings]}


def _store_encoding(folder: Path, arrays: dict[str, np.ndarray], encoding: Any, ids: np.ndarray, n: int,
                    dtype: np.dtype) -> None:
    """Write the tensor fields of ``encoding`` (rows ``ids``) into ``folder/FIELD.npy`` memmaps of ``n`` rows,
    floating fields as ``dtype``."""
    for field in dataclasses.fields(encoding):
        value = getattr(encoding, field.name)
        if value is None:  # an optional field this model does not fill
            continue
        if field.name not in arrays:
            folder.mkdir(exist_ok=True)
            arrays[field.name] = np.lib.format.open_memmap(folder / f"{field.name}.npy", mode="w+",
                                                           dtype=dtype if value.is_floating_point() else
                                                           np.int64, shape=(n, *value.shape[1:]))
        arrays[field.name][ids] = value.cpu().numpy()


def _write_faiss(folder: Path, generation: int, kind: str, nlist: int | None, nprobe: int | None,
                 segments: list[Path], m: int | None = None) -> dict[str, Any]:
    """FAISS indexes over all segments' image (and caption) embeddings, read memory-mapped; their metadata
    entry."""
    entry: dict[str, Any] = {"kind": kind, "images": f"images.{generation}.faiss", "captions": None}
    images = make_faiss([np.load(s / "image_emb.npy", mmap_mode="r") for s in segments], kind, nlist, m)
    captions = [np.load(s / "caption_emb.npy", mmap_mode="r") for s in segments]
    if kind != "flat":
        images.nprobe = nprobe or images.nprobe
        entry.update(nlist=images.nlist, nprobe=images.nprobe)
    if kind == "ivfpq":
        entry.update(m=images.pq.M)
    save_faiss(images, folder / entry["images"])
    n_captions = sum(len(c) for c in captions)
    if n_captions:
        entry["captions"] = f"captions.{generation}.faiss"
        caption_kind = choose_kind(n_captions, "auto") if kind != "flat" else "flat"
        save_faiss(make_faiss([c for c in captions if len(c)], caption_kind), folder / entry["captions"])
    return entry


def _extend_faiss(folder: Path, generation: int, index: Index, segment: Path) -> dict[str, Any]:
    """The index's FAISS indexes with ``segment``'s embeddings added, saved under a new generation."""
    entry = {**index.meta["faiss"], "images": f"images.{generation}.faiss"}
    index.image_faiss.add(np.load(segment / "image_emb.npy"))
    save_faiss(index.image_faiss, folder / entry["images"])
    captions = np.load(segment / "caption_emb.npy")
    if index.caption_faiss is None and len(captions):
        entry["captions"] = f"captions.{generation}.faiss"
        save_faiss(make_faiss(captions, "flat"), folder / entry["captions"])
    elif index.caption_faiss is not None:
        entry["captions"] = f"captions.{generation}.faiss"
        index.caption_faiss.add(captions)
        save_faiss(index.caption_faiss, folder / entry["captions"])
    return entry
