"""The image and caption embeddings of a split under an embedding model (VSE, HREM), written
as memory-mappable ``.npy`` files for search and reuse (`itmatch encode`).

``OUT/images.npy`` float32 (n_images, d) and ``OUT/captions.npy`` float32 (n_captions, d) hold L2-normalised
embeddings (a pair's score is the dot product), ``OUT/caption_image.npy`` int64 (n_captions,) the image of each
caption, and ``OUT/embeddings.json`` what produced them. The folder is written under a temporary name beside
``OUT`` and takes its place when complete: a stopped run leaves an earlier ``OUT`` as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import FolderFormat, atomic_dir, check_folder, new_npy, write_json

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
    from itmatch.models.registry import embedding_models
    from itmatch.scoring import feature_batches, resolve_device, text_batches

    out = Path(out)
    check_folder(out, FOLDER)
    dev = resolve_device(device)
    model, words = load_models([checkpoint], vocab, trust=trust, device=str(dev))
    if not model.is_embedding:
        raise ItmatchError(f"{checkpoint}: itmatch encode needs an embedding model ({', '.join(embedding_models())}); "
                           f"{model.model_name or type(model).__name__} scores pairs with cross-attention")
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
        captions = _array(tmp / "captions.npy", (data_split.n_captions, dim))
        for index, chunk in text_batches(model, tokens, dev, batch_size, progress):
            captions[index] = chunk.emb.float().cpu().numpy()
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


def _array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A new float32 ``.npy`` memmap of ``shape`` at ``path``, to fill."""
    return new_npy(path, np.float32, shape)
