"""Training batches read from a memory-mapped precomp split, in an order that only (seed, epoch) decide.

As the SGRAF authors' loader: an epoch visits every caption once, each paired with its image, in a random order;
a batch is ``batch_size`` consecutive pairs of that order, the last one smaller, sorted by caption length, longest
first. Because the order is a pure function of (seed, epoch), a resumed run regenerates it and skips the batches
already done. A background thread reads the next batch (image rows of the memmap, ascending for locality, and
tokenization) while the current one trains; the content never depends on timing.

With W processes every batch is split into W contiguous slices of the sorted pairs; each process reads only its
own slice's image rows. Given image clusters, batches are built from neighbouring images instead
(``itmatch.train.neighbours``, HREM's neighbour batch sampling), equally a pure function of (seed, epoch).
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
from itmatch.train.neighbours import neighbour_batches

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
    token ids (a vocabulary's ``encode_all``, or a model's own tokenizer). With ``clusters`` (n_images,) cluster
    ids, each batch holds captions of images from the same clusters (the last partial batch dropped)."""

    def __init__(self, split: PrecompSplit, tokenize: Tokenizer, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, clusters: np.ndarray | None = None) -> None:
        self.split, self.tokenize = split, tokenize
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.cluster_of_caption = None if clusters is None else np.asarray(clusters)[split.caption_image]

    def __len__(self) -> int:
        """Batches per epoch; with several processes a last batch with fewer pairs than processes is dropped."""
        full, rest = divmod(self.split.n_captions, self.batch_size)
        if self.cluster_of_caption is not None:
            return full
        return full + (1 if rest >= self.world_size else 0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... of ``epoch``, the next one read ahead in a thread."""
        batches = self.epoch_batches(epoch)
        with ThreadPoolExecutor(1, thread_name_prefix="itmatch-loader") as pool:
            pending = pool.submit(self.read, batches[start]) if start < len(self) else None
            for index in range(start, len(self)):
                batch = pending.result()
                pending = pool.submit(self.read, batches[index + 1]) if index + 1 < len(self) else None
                yield batch

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The caption indices of every batch of ``epoch``, in training order."""
        if self.cluster_of_caption is not None:
            return list(neighbour_batches(self.cluster_of_caption, self.batch_size, self.seed, epoch))
        order = epoch_order(self.seed, epoch, self.split.n_captions)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def read(self, captions: np.ndarray) -> Batch:
        """The batch of the caption indices ``captions``: this process's slice, sorted by caption length."""
        token_lists = self.tokenize([self.split.captions[c] for c in captions])
        by_length = np.argsort([-len(t) for t in token_lists], kind="stable")
        images = self.split.caption_image[captions[by_length]]
        mine = np.array_split(np.arange(len(captions)), self.world_size)[self.rank]
        features = self.split.image_features(images[mine])
        release_mapped_pages(self.split.features)
        tokens, lengths = pad_tokens([token_lists[by_length[i]] for i in mine])
        return Batch(torch.from_numpy(features), tokens, lengths, torch.from_numpy(images))
