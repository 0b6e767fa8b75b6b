"""The image and caption embeddings of a split under an embedding model (VSE, HREM), written
as memory-mappable ``.npy`` files for search and reuse (`itmatch encode`).

``OUT/images.npy`` float32 (n_images, d) and ``OUT/captions.npy`` float32 (n_captions, d) hold L2-normalised
embeddings (a pair's score is the dot product), ``OUT/caption_image.npy`` int64 (n_captions,) the image of each
caption, and ``OUT/embeddings.json`` what produced them. The folder is written under a temporary name beside
``OUT`` and takes its place when complete: a stopped run leaves an earlier ``OUT`` as it was.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat, atomic_dir, check_folder, new_npy, write_json
from itmatch.models.base import Matcher

FORMAT = "itmatch-embeddings"
FORMAT_VERSION = 1
FILES = ("images.npy", "captions.npy", "caption_image.npy", "embeddings.json")
#: The folder for :mod:`itmatch.fileio`'s rule (folders of older versions: by their names and embeddings.json).
FOLDER = FolderFormat(FORMAT, FORMAT_VERSION, legacy=FILES, legacy_files=(("embeddings.json", ("format",)),))


def encode_split(checkpoint: str | Path, data: str | Path, split: str, out: str | Path, *,
                 vocab: str | Path | None = None, device: str = "cpu", batch_size: int = 128,
                 trust: bool = False, progress: bool = False) -> dict:
    """Encode every image and caption of ``data``/``split`` with the embedding model in ``checkpoint`` and write
    them to the folder ``out`` (new, empty, or one `encode` wrote and nothing else did); returns the metadata
    written to ``out/embeddings.json``."""
    from itmatch.data.precomp import ImageRows, load_split
    from itmatch.loading import caption_tokens, load_models
    from itmatch.scoring import feature_batches, resolve_device

    out = Path(out)
    check_folder(out, FOLDER)
    dev = resolve_device(device)
    model, words = load_models([checkpoint], vocab, trust=trust, device=str(dev))
    require_embedding(model, checkpoint, "itmatch encode")
    if batch_size < 1:
        raise ItmatchError(f"--batch-size must be >= 1, got {batch_size}")
    data_split = load_split(data, split)
    tokens = caption_tokens(model, words, data_split.captions)
    dim = model.config.embed_size
    start = time.perf_counter()
    with atomic_dir(out, FOLDER) as tmp, torch.inference_mode():
        images = _array(tmp / "images.npy", (data_split.n_images, dim))
        rows = ImageRows(data_split, np.arange(data_split.n_images))
        for index, feats in feature_batches(rows, batch_size, progress):
            images[index] = model.encode_images(feats.to(dev)).emb.float().cpu().numpy()
        captions = embed_captions(model, tokens, dev, _array(tmp / "captions.npy", (data_split.n_captions, dim)),
                                  batch_size, progress)
        images.flush()
        captions.flush()
        del images, captions  # closed before the folder is renamed
        np.save(tmp / "caption_image.npy", data_split.caption_image.astype(np.int64))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_name": model.model_name,
                "checkpoint": str(checkpoint), "data": str(data), "split": split, "n_images": data_split.n_images,
                "n_captions": data_split.n_captions, "dim": dim, "normalized": True,
                "seconds": round(time.perf_counter() - start, 3)}
        write_json(tmp / "embeddings.json", meta)
    return meta


def require_embedding(model: Matcher, source: str | Path, needed_by: str, fix: str = "") -> None:
    """Raise :class:`ItmatchError` naming ``source`` unless ``model`` is an embedding model (one vector per item),
    which ``needed_by`` needs; ``fix``: what to do with it instead."""
    if not model.is_embedding:
        from itmatch.models.registry import embedding_models

        raise ItmatchError(f"{source}: {needed_by} needs an embedding model ({', '.join(embedding_models())}), not "
                           f"{model.display_name}, which scores pairs with cross-attention"
                           + (f"; {fix}" if fix else ""))


def embed_captions(model: Matcher, tokens: Sequence[Sequence[int]], device: torch.device, out: np.ndarray,
                   batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """``out`` (n_captions, d) filled with the embedding model's caption vectors, encoded longest first."""
    from itmatch.scoring import TEXT_BATCH, text_batches

    for index, chunk in text_batches(model, tokens, device, batch_size or TEXT_BATCH, progress):
        out[index] = chunk.emb.float().cpu().numpy()
    return out


def _array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A new float32 ``.npy`` memmap of ``shape`` at ``path``, to fill."""
    return new_npy(path, np.float32, shape)
