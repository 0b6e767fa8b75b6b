"""The scoring engine: every image × caption score of a model, tiled under a memory budget.

Models never loop over captions. The engine encodes each image and caption once, sorts captions by length
(so a tile's padding is small), and scores image × caption tiles sized so one tile's working memory stays
under ``max_memory``. An ``Ensemble`` is scored member by member, each with its own tiles, then averaged.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from itmatch.distributed import resolve_device
from itmatch.errors import ItmatchError
from itmatch.models.base import Encoding, Matcher, TextEncoding
from itmatch.models.ensemble import member_mean

PRECISIONS = ("fp32", "tf32", "bf16")
#: Captions per text-encoder call of the engine: the Bi-GRU's matrix products are efficient only over many
#: captions at once, so captions are encoded in large batches and then cut into the (small) scoring tiles.
TEXT_BATCH = 128


def default_tiling(device: torch.device) -> tuple[int, int]:
    """(working memory of one tile in bytes, captions per tile) that suit ``device``.

    On a CPU: 8 captions and a 256 MiB estimate. The estimates (``pair_bytes_per_word``) count the attended
    vectors and their differences, which the CPU's fp32 path makes block by block in the caches
    (``similarity_vectors``), so a tile really uses a fraction of it; measured against 64 MiB (one thread):
    TSHSR 1.2× faster, SGR and SAF the same within the noise. A GPU wants large tiles: a quarter of its free
    memory, 128 captions.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4, 128
    return 256 << 20, 8


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Run matrix products in ``fp32`` (exact), ``tf32`` (GPU tensor cores) or ``bf16`` (autocast)."""
    if precision not in PRECISIONS:
        raise ItmatchError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pad_tokens(token_lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> zero-padded int64 (B, L_max) and lengths (B,)."""
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
    if len(lengths) and int(lengths.min()) < 1:
        raise ItmatchError("a caption has no tokens; every caption needs at least one word")
    tokens = torch.zeros(len(token_lists), int(lengths.max()) if len(lengths) else 0, dtype=torch.int64)
    for row, ids in enumerate(token_lists):
        tokens[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
    return tokens, lengths


def feature_batches(features: np.ndarray | torch.Tensor, batch_size: int = 128, progress: bool = False,
                    desc: str = "encode images") -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, float32 tensor (b, R, D))`` for consecutive batches of ``features`` (an array, a memmap read batch
    by batch, or any sliceable with a length): the loop every image encoder runs."""
    for start in tqdm(range(0, len(features), batch_size), desc=desc, disable=not progress, leave=False):
        rows = slice(start, min(start + batch_size, len(features)))
        yield rows, torch.as_tensor(np.asarray(features[rows], dtype=np.float32))


def encode_images(model: Matcher, features: np.ndarray | torch.Tensor, device: torch.device,
                  batch_size: int = 128, progress: bool = False) -> Encoding:
    """Encode all rows of ``features`` (N, R, D) (memory-mapped arrays are read batch by batch)."""
    parts = [model.encode_images(block.to(device)) for _, block in feature_batches(features, batch_size, progress)]
    return type(parts[0]).cat(parts)


def text_batches(model: Matcher, token_lists: Sequence[Sequence[int]], device: torch.device,
                 batch_size: int = TEXT_BATCH, progress: bool = False) -> Iterator[tuple[np.ndarray, Encoding]]:
    """``(caption indices, encoding)`` of captions encoded longest first, ``batch_size`` at a time."""
    order = np.argsort([-len(t) for t in token_lists], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="encode texts", disable=not progress, leave=False):
        index = order[start:start + batch_size]
        tokens, lengths = pad_tokens([token_lists[i] for i in index])
        yield index, model.encode_texts(tokens.to(device), lengths)


def encode_texts(model: Matcher, token_lists: Sequence[Sequence[int]], device: torch.device,
                 batch_size: int = TEXT_BATCH, progress: bool = False) -> list[tuple[np.ndarray, Encoding]]:
    """Encode captions longest first in chunks; returns (caption indices, encoding) per chunk."""
    return list(text_batches(model, token_lists, device, batch_size, progress))


def images_per_tile(model: Matcher, texts: Encoding, n_images: int, budget: int) -> int:
    """Images per tile scored against the captions ``texts``: as many as keep the tile's working memory, images ×
    captions × (longest caption + 1) × ``pair_bytes_per_word``, within ``budget`` bytes (at least one); all
    ``n_images`` for a model scored by one matrix product."""
    per_word = model.pair_bytes_per_word()
    if not per_word:
        return max(1, n_images)
    words = int(texts.lengths.max()) + 1 if isinstance(texts, TextEncoding) else 1
    return max(1, budget // (len(texts) * words * per_word))


def score_matrix(model: Matcher, features: np.ndarray | torch.Tensor, token_lists: Sequence[Sequence[int]], *,
                 device: str | torch.device | None = "cpu", precision: str = "fp32",
                 max_memory: int | None = None, caption_chunk: int | None = None, image_chunk: int | None = None,
                 progress: bool = False) -> np.ndarray:
    """Scores (n_images, n_captions) float32 of every image (rows of ``features``) against every caption.

    ``max_memory`` bounds one tile's working memory and ``caption_chunk`` its captions (defaults:
    ``default_tiling``); ``image_chunk`` fixes its images instead of deriving them from the budget.
    """
    dev = resolve_device(device)
    tile_memory, tile_captions = default_tiling(dev)
    budget = max_memory or tile_memory
    caption_chunk = caption_chunk or tile_captions
    members = model.member_models()

    def member_scores(member: Matcher) -> list[np.ndarray]:
        was_training = member.training
        member.eval()
        try:
            return [_score_member(member, features, token_lists, dev, budget, caption_chunk, image_chunk, progress)]
        finally:
            member.train(was_training)

    with torch.inference_mode(), precision_context(precision, dev):
        return member_mean(map(member_scores, members), np.float32)[0]  # a float32 sum: half the memory


def _score_member(model: Matcher, features, token_lists, dev: torch.device, budget: int, caption_chunk: int,
                  image_chunk: int | None, progress: bool) -> np.ndarray:
    images = encode_images(model, features, dev, progress=progress)
    texts = encode_texts(model, token_lists, dev, max(caption_chunk, TEXT_BATCH), progress)
    return score_encoded(model, images, texts, budget, caption_chunk, image_chunk, progress)


def score_encoded(model: Matcher, images: Encoding, texts: list[tuple[np.ndarray, Encoding]], budget: int,
                  caption_chunk: int, image_chunk: int | None = None, progress: bool = False) -> np.ndarray:
    """The pair work of ``score_matrix`` alone: scores (n_images, n_captions) of encoded images and caption
    chunks (``encode_texts``'s output), in tiles of ``caption_chunk`` captions × images under ``budget`` bytes;
    on a CPU with several intra-op threads the tiles run side by side (``_tile_map``)."""
    n_captions = sum(len(index) for index, _ in texts)
    images = model.prepared_images(images)
    out = np.empty((len(images), n_captions), dtype=np.float32)
    bar = tqdm(total=len(images) * n_captions, desc=f"score {model.model_name or 'pairs'}", unit="pair",
               unit_scale=True, disable=not progress, leave=False)
    tiles = []
    for index, chunk in _caption_tiles(texts, caption_chunk):
        step = image_chunk or images_per_tile(model, chunk, len(images), budget)
        tiles += [(index, chunk, slice(start, start + step)) for start in range(0, len(images), step)]

    def score_tile(tile: tuple[np.ndarray, Encoding, slice]) -> None:
        index, chunk, rows = tile
        block = model.score(images.select(rows), chunk)
        out[rows, index] = block.float().cpu().numpy()
        bar.update(block.numel())

    device = next(iter(model.parameters()), torch.empty(0)).device
    with _tile_map(device) as tile_map:
        for _ in tile_map(score_tile, tiles):
            pass
    bar.close()
    return out


@contextlib.contextmanager
def _tile_map(device: torch.device) -> Iterator[Callable[..., Iterator[Any]]]:
    """A ``map`` over independent tiles. On a CPU with n > 1 intra-op threads (and no autocast): n worker threads
    of one intra-op thread each, so that each core runs whole tiles: the engine's many small products and
    element-wise passes split poorly across cores (2 cores here: SAF and TSHSR pairs 1.1x faster than with 2
    intra-op threads, SGR the same), and a tile's scores are those of one thread. The caller's grad and
    inference modes, which are per thread, are carried into the workers; the intra-op thread count is restored
    afterwards; a failure (or Ctrl-C) cancels the tiles not yet started (``Executor.map``'s iterator does)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or torch.is_autocast_enabled("cpu"):
        yield map
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_caller_modes(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(item: Any) -> Any:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return function(item)
        return run

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="itmatch-tile") as pool:
            yield lambda function, items: pool.map(in_caller_modes(function), items)
    finally:
        torch.set_num_threads(threads)


def _caption_tiles(chunks: list[tuple[np.ndarray, Encoding]], size: int) -> Iterator[tuple[np.ndarray, Encoding]]:
    """The encoded caption chunks cut into tiles of ``size`` captions (trimmed to their longest caption)."""
    for index, chunk in chunks:
        for start in range(0, len(index), size):
            tile = chunk.select(slice(start, start + size))
            yield index[start:start + size], tile.trimmed() if isinstance(tile, TextEncoding) else tile
