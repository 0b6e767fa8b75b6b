"""Training batches read from a memory-mapped precomp split, in an order that only (seed, epoch) decide.

As the SGRAF authors' loader: an epoch visits every caption once, each paired with its image, in a random order;
a batch is ``batch_size`` consecutive pairs of that order, the last one smaller, sorted by caption length, longest
first. Because the order is a pure function of (seed, epoch), a resumed run regenerates it and skips the batches
already done. A background thread reads the next batch (image rows of the memmap, ascending for locality, and
tokenization) while the current one trains; the content never depends on timing.

With W processes every batch is split into W contiguous slices of the sorted pairs; each process reads only its
own slice's image rows.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from itmatch.data.precomp import PrecompSplit
from itmatch.scoring import pad_tokens

Tokenizer = Callable[[list[str]], list[list[int]]]


@dataclasses.dataclass
class Batch:
    """This process's slice of one global batch, plus what the loss needs of the whole batch.

    ``features`` (b, R, D) float32, ``tokens`` (b, L) int64 zero-padded, ``lengths`` (b,) of this slice;
    ``images`` (B,) int64 image index of every pair of the global batch, in batch order.
    """

    features: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    images: torch.Tensor


def epoch_order(seed: int, epoch: int, n_captions: int) -> np.ndarray:
    """The captions of ``epoch`` in training order: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_captions)


def release_mapped_pages(features: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array that reads have touched (the kernel keeps them in its page
    cache): without this, every row ever read stays in the process's resident set."""
    mapping = getattr(features, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class TrainBatches:
    """The batches of ``split`` for this process (``rank`` of ``world_size``); ``tokenize`` turns captions into
    token ids (a vocabulary's ``encode_all``, or a model's own tokenizer)."""

    def __init__(self, split: PrecompSplit, tokenize: Tokenizer, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.split, self.tokenize = split, tokenize
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Batches per epoch; with several processes a last batch with fewer pairs than processes is dropped."""
        full, rest = divmod(self.split.n_captions, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... of ``epoch``, the next one read ahead in a thread."""
        order = epoch_order(self.seed, epoch, self.split.n_captions)
        with ThreadPoolExecutor(1, thread_name_prefix="itmatch-loader") as pool:
            pending = pool.submit(self.read, order, start) if start < len(self) else None
            for index in range(start, len(self)):
                batch = pending.result()
                pending = pool.submit(self.read, order, index + 1) if index + 1 < len(self) else None
                yield batch

    def read(self, order: np.ndarray, index: int) -> Batch:
        """Batch ``index`` of the epoch whose caption order is ``order``."""
        captions = order[index * self.batch_size : (index + 1) * self.batch_size]
        token_lists = self.tokenize([self.split.captions[c] for c in captions])
        by_length = np.argsort([-len(t) for t in token_lists], kind="stable")
        images = self.split.caption_image[captions[by_length]]
        mine = np.array_split(np.arange(len(captions)), self.world_size)[self.rank]
        features = self.split.image_features(images[mine])
        release_mapped_pages(self.split.features)
        tokens, lengths = pad_tokens([token_lists[by_length[i]] for i in mine])
        return Batch(torch.from_numpy(features), tokens, lengths, torch.from_numpy(images))
