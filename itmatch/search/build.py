"""Writing a search index (the format: ``itmatch.search.index``): ``build_index`` makes a new folder, one segment
per features folder; ``add_to_index`` appends a segment to an existing one under its lock, encoded with the index's
own models, and gives the FAISS files a new generation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_dir, check_folder, folder_lock, mark_folder, new_npy, remove_stale, write_json
from itmatch.search.gallery import Gallery, already_in, open_gallery
from itmatch.search.index import (BOXES, CAPTION_EMB, CAPTION_IMAGE, CAPTIONS, FEATURES, FOLDER, FORMAT, FORMAT_VERSION,
                                  IMAGE_EMB, INDEX_FILE, PICTURES, Index, IndexModels, faiss_file, index_file,
                                  load_index_models, open_index, reranker_dir, segment_dir)
from itmatch.search.vectors import choose_kind, make_faiss, save_faiss

STORE_DTYPES = ("float32", "float16")
BLOCK = 256  # pictures encoded at once while building


def check_store_dtype(store_dtype: str) -> np.dtype:
    """The numpy dtype of ``--store-dtype`` (float32 or float16)."""
    if store_dtype not in STORE_DTYPES:
        raise ItmatchError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}")
    return np.dtype(store_dtype)


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
        segments = [_write_segment(tmp / segment_dir(k), gallery, models, device, progress, dtype)
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
    index_file(index_dir)  # an index, before it is locked (and read, under the lock)
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
    name = segment_dir(number)
    dtype = check_store_dtype(meta.get("store_dtype", "float32"))  # the index's own format
    mark_folder(index_dir, FOLDER, claim=[name, faiss_file("images", number + 1), faiss_file("captions", number + 1)])
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
    mark_folder(index_dir, FOLDER, settle=[name])  # the new segment's files, not every file in its folder
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
                            "rerankers": [store(path, reranker_dir(k)) for k, path in enumerate(rerankers)],
                            "vocab": None}
    if vocab is not None:
        meta["vocab"] = store(vocab, "vocab")["file"]
    return meta


def _write_segment(folder: Path, gallery: Gallery, models: IndexModels, device: str, progress: bool,
                   dtype: np.dtype = np.dtype(np.float32)) -> dict[str, Any]:
    """Write one segment (see the module docstring) into the new folder ``folder``, region features and
    re-ranker encodings as ``dtype``; its metadata entry, with ``fields``: each re-ranker's encoding field
    names."""
    import torch

    from itmatch.embeddings import embed_captions
    from itmatch.loading import caption_tokens
    from itmatch.scoring import feature_batches

    folder.mkdir(parents=True, exist_ok=True)
    n = gallery.n_images
    features = new_npy(folder / FEATURES, dtype, (n, gallery.n_regions, gallery.dim))
    dim = models.embedder.config.embed_size
    image_emb = new_npy(folder / IMAGE_EMB, np.float32, (n, dim))
    encodings: list[dict[str, np.ndarray]] = [{} for _ in models.rerankers]
    with torch.inference_mode():
        for ids, block in feature_batches(gallery, BLOCK, progress, desc="index pictures"):
            features[ids] = block.numpy()
            feats = block.to(device)
            image_emb[ids] = models.embedder.encode_images(feats).emb.float().cpu().numpy()
            for k, (model, _) in enumerate(models.rerankers):
                _store_encoding(folder / reranker_dir(k), encodings[k], model.encode_images(feats), ids, n, dtype)
        tokens = caption_tokens(models.embedder, models.embedder_vocab, gallery.captions)
        caption_emb = embed_captions(models.embedder, tokens, torch.device(device),
                                     np.zeros((len(gallery.captions), dim), dtype=np.float32), progress=progress)
    for array in [features, image_emb, *(a for group in encodings for a in group.values())]:
        array.flush()
    np.save(folder / CAPTION_EMB, caption_emb)
    np.save(folder / CAPTION_IMAGE, np.asarray(gallery.caption_image, dtype=np.int64))
    (folder / CAPTIONS).write_text("".join(f"{c}\n" for c in gallery.captions), encoding="utf-8")
    (folder / PICTURES).write_text("".join(json.dumps(p) + "\n" for p in gallery.pictures), encoding="utf-8")
    if gallery.boxes is not None:
        np.save(folder / BOXES, np.asarray(gallery.boxes, dtype=np.float32))
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
            arrays[field.name] = new_npy(folder / f"{field.name}.npy", dtype if value.is_floating_point() else
                                         np.int64, (n, *value.shape[1:]))
        arrays[field.name][ids] = value.cpu().numpy()


def _write_faiss(folder: Path, generation: int, kind: str, nlist: int | None, nprobe: int | None,
                 segments: list[Path], m: int | None = None) -> dict[str, Any]:
    """FAISS indexes over all segments' image (and caption) embeddings, read memory-mapped; their metadata
    entry."""
    entry: dict[str, Any] = {"kind": kind, "images": faiss_file("images", generation), "captions": None}
    images = make_faiss([np.load(s / IMAGE_EMB, mmap_mode="r") for s in segments], kind, nlist, m)
    captions = [np.load(s / CAPTION_EMB, mmap_mode="r") for s in segments]
    if kind != "flat":
        images.nprobe = nprobe or images.nprobe
        entry.update(nlist=images.nlist, nprobe=images.nprobe)
    if kind == "ivfpq":
        entry.update(m=images.pq.M)
    save_faiss(images, folder / entry["images"])
    n_captions = sum(len(c) for c in captions)
    if n_captions:
        entry["captions"] = faiss_file("captions", generation)
        caption_kind = choose_kind(n_captions, "auto") if kind != "flat" else "flat"
        save_faiss(make_faiss([c for c in captions if len(c)], caption_kind), folder / entry["captions"])
    return entry


def _extend_faiss(folder: Path, generation: int, index: Index, segment: Path) -> dict[str, Any]:
    """The index's FAISS indexes with ``segment``'s embeddings added, saved under a new generation."""
    entry = {**index.meta["faiss"], "images": faiss_file("images", generation)}
    index.image_faiss.add(np.load(segment / IMAGE_EMB))
    save_faiss(index.image_faiss, folder / entry["images"])
    captions = np.load(segment / CAPTION_EMB)
    if index.caption_faiss is None and len(captions):
        entry["captions"] = faiss_file("captions", generation)
        save_faiss(make_faiss(captions, "flat"), folder / entry["captions"])
    elif index.caption_faiss is not None:
        entry["captions"] = faiss_file("captions", generation)
        index.caption_faiss.add(captions)
        save_faiss(index.caption_faiss, folder / entry["captions"])
    return entry
