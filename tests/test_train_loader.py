"""Training batches: the authors' order (every caption once per epoch, sorted by length inside a batch), a pure
function of (seed, epoch), split into contiguous slices across processes, read without growing the RSS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import synthetic_data

from itmatch.data import load_split, load_vocab
from itmatch.train.loader import TrainBatches, epoch_order, release_mapped_pages


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_data(tmp_path_factory.mktemp("loader"), train=21, dev=2, test=2)


def batches(data: Path, rank: int = 0, world: int = 1, batch_size: int = 16) -> TrainBatches:
    split = load_split(data, "train")
    return TrainBatches(split, load_vocab(data / "vocab.json").encode_all, batch_size, seed=3, rank=rank,
                        world_size=world)


def test_order_depends_only_on_seed_and_epoch() -> None:
    assert np.array_equal(epoch_order(3, 1, 50), epoch_order(3, 1, 50))
    assert not np.array_equal(epoch_order(3, 1, 50), epoch_order(3, 2, 50))
    assert not np.array_equal(epoch_order(3, 1, 50), epoch_order(4, 1, 50))
    assert sorted(epoch_order(3, 1, 50)) == list(range(50))


def test_an_epoch_visits_every_caption_once_sorted_by_length(data: Path) -> None:
    loader = batches(data)
    split, vocab = loader.split, load_vocab(data / "vocab.json")
    assert len(loader) == 7  # 105 captions: six batches of 16 and one of 9 (the authors keep the last)
    seen = []
    for batch in loader.epoch(0):
        lengths = batch.lengths.tolist()
        assert lengths == sorted(lengths, reverse=True) and len(batch.images) == len(lengths)
        for row, image in enumerate(batch.images.tolist()):
            ids = batch.tokens[row, : lengths[row]].tolist()
            caption = next(c for c in range(split.n_captions) if split.caption_image[c] == image
                           and c not in seen and vocab.encode(split.captions[c]) == ids)
            seen.append(caption)
            assert torch.equal(batch.features[row], torch.from_numpy(split.image_features(np.array([image]))[0]))
    assert sorted(seen) == list(range(split.n_captions))


def test_resuming_inside_an_epoch_gives_the_remaining_batches(data: Path) -> None:
    whole = list(batches(data).epoch(2))
    tail = list(batches(data).epoch(2, start=4))
    assert len(tail) == 3
    for a, b in zip(whole[4:], tail):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features)


def test_processes_take_contiguous_slices_of_the_global_batch(data: Path) -> None:
    single = list(batches(data).epoch(1))
    ranks = [list(batches(data, rank, 3).epoch(1)) for rank in range(3)]
    for index, whole in enumerate(single):
        parts = [r[index] for r in ranks]
        assert all(torch.equal(p.images, whole.images) for p in parts)  # every rank knows the global batch
        assert torch.equal(torch.cat([p.features for p in parts]), whole.features)
        assert torch.cat([p.lengths for p in parts]).tolist() == whole.lengths.tolist()


def test_a_last_batch_smaller_than_the_world_is_dropped(data: Path) -> None:
    assert len(batches(data, batch_size=26)) == 5  # 105 = 4 × 26 + 1
    assert len(batches(data, 0, 2, batch_size=26)) == 4


def test_released_pages_leave_the_resident_set(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.ones((64, 1 << 18), dtype=np.float32))  # 64 MiB
    array = np.load(path, mmap_mode="r")

    def rss_file_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("RssFile:")).split()[1])

    before = rss_file_kib()
    assert float(np.asarray(array[::2]).sum()) == 32 * (1 << 18)  # touches every other row: 32 MiB
    touched = rss_file_kib()
    release_mapped_pages(array)
    after = rss_file_kib()
    assert touched - before > 24 << 10
    assert after - before < 4 << 10
    assert float(np.asarray(array[1]).sum()) == 1 << 18  # the mapping still reads
