"""HREM's neighbour batch sampling: clustering of image features, batches drawn from clusters, the loader and a
resumed `itmatch train` run with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_support import checkpoint, max_difference, run_train, synthetic_data, train_args

from itmatch.data import load_split, load_vocab
from itmatch.errors import ItmatchError
from itmatch.train.loader import TrainBatches
from itmatch.train.neighbours import image_clusters, neighbour_batches


def test_image_clusters_recover_planted_groups() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 5
    group = np.repeat(np.arange(3), 10)
    feats = (centres[group][:, None, :] + rng.standard_normal((30, 4, 16))).astype(np.float32)
    found = image_clusters(feats, 3, seed=1, block=7)  # blocks that do not divide the images
    for g in range(3):
        assert len(set(found[group == g])) == 1
    assert len(set(found)) == 3
    with pytest.raises(ItmatchError, match="neighbour_clusters must lie in 1..30"):
        image_clusters(feats, 31)


def test_neighbour_batches_come_from_clusters_and_cover_the_captions() -> None:
    clusters = np.repeat(np.arange(4), 5)                 # 20 images, 4 clusters of 5
    cluster_of_caption = clusters[np.repeat(np.arange(20), 5)]  # 100 captions, 25 per cluster
    batches = neighbour_batches(cluster_of_caption, 25, seed=3, epoch=0)
    assert batches.shape == (4, 25)
    assert sorted(batches.ravel()) == list(range(100))
    assert all(len(set(cluster_of_caption[b])) == 1 for b in batches)  # cluster size = batch size here
    assert np.array_equal(neighbour_batches(cluster_of_caption, 25, seed=3, epoch=0), batches)
    assert not np.array_equal(neighbour_batches(cluster_of_caption, 25, seed=3, epoch=1), batches)
    assert neighbour_batches(cluster_of_caption, 30, seed=3, epoch=0).shape == (3, 30)  # last partial dropped


def test_loader_reads_neighbour_batches(tmp_path: Path) -> None:
    data = synthetic_data(tmp_path, train=21, dev=2, test=2)
    split = load_split(data, "train")
    clusters = np.arange(21) // 3                           # 7 clusters of 3 images = 15 captions each
    loader = TrainBatches(split, load_vocab(data / "vocab.json").encode_all, 15, seed=5, clusters=clusters)
    assert len(loader) == 7
    seen = []
    for batch in loader.epoch(1):
        images = batch.images.numpy()
        assert len(set(clusters[images])) == 1 and len(images) == 15
        assert batch.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)
        seen += images.tolist()
    assert sorted(seen) == sorted(split.caption_image.tolist())
    tail = list(loader.epoch(1, start=5))
    assert [b.images.tolist() for b in tail] == [b.images.tolist() for b in list(loader.epoch(1))[5:]]


def test_training_with_neighbour_batches_resumes_exactly(tmp_path: Path) -> None:
    data = synthetic_data(tmp_path / "data", train=40, dev=10, test=10)
    extra = ("data.neighbour_clusters=5", "run.max_steps=14")   # 200 captions: 12 batches of 16 an epoch
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_train(train_args("sgr", data, whole, *extra))
    run_train(train_args("sgr", data, parts, "data.neighbour_clusters=5", "run.max_steps=5"))
    run_train([*train_args("sgr", data, parts, *extra), "--resume"])
    a, b = checkpoint(whole / "last.pt"), checkpoint(parts / "last.pt")
    assert (a["epoch"], a["step_in_epoch"]) == (1, 2)
    assert max_difference(a["state_dict"], b["state_dict"]) <= 1e-6
