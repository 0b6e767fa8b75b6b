"""Helpers of the training tests: small planted synthetic data, small recipes, `itmatch train` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from itmatch.data import write_synthetic
from itmatch.train import TrainConfig, load_config
from itmatch.train.loader import Batch

ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM = 32
#: Small model sizes for fast tests (the published recipes keep the authors' sizes).
SMALL = ["model.args.embed_size=32", "model.args.sim_dim=16", "model.args.word_dim=16",
         f"model.args.img_dim={FEATURE_DIM}", "data.dev_subset=false"]


def synthetic_data(root: Path, train: int = 60, dev: int = 20, test: int = 20, seed: int = 0) -> Path:
    """A planted precomp folder (36 regions × FEATURE_DIM, 5 captions per image) with its vocab.json."""
    return write_synthetic(root, n_images={"train": train, "dev": dev, "test": test}, feature_dim=FEATURE_DIM,
                           seed=seed)


def small_overrides(*extra: str, batch_size: int = 16) -> list[str]:
    """``--set`` items that shrink a published recipe to a test's size."""
    return [*SMALL, f"data.batch_size={batch_size}", *extra]


def small_config(model: str = "sgr", *extra: str, batch_size: int = 16) -> TrainConfig:
    """The Flickr30K recipe of ``model`` (sgr or saf) at test size."""
    return load_config(ROOT / "configs" / f"{model}_f30k.toml", small_overrides(*extra, batch_size=batch_size))


def train_args(model: str, data: Path, out: Path, *extra: str, batch_size: int = 16) -> list[str]:
    """Arguments of `itmatch train` for a small run of ``model`` (extra items are ``--set`` values)."""
    args = ["--config", str(ROOT / "configs" / f"{model}_f30k.toml"), "--data", str(data), "--vocab",
            str(data / "vocab.json"), "--out", str(out), "--device", "cpu", "--no-progress"]
    for item in small_overrides(*extra, batch_size=batch_size):
        args += ["--set", item]
    return args


def run_train(args: list[str], *, launcher: list[str] | None = None, check: bool = True
              ) -> subprocess.CompletedProcess:
    """`python -m itmatch train ARGS` (or under ``launcher``, e.g. torchrun) in a new process."""
    command = [*(launcher or [sys.executable]), "-m", "itmatch", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def checkpoint(path: Path) -> dict:
    """A run's checkpoint, loaded the safe way (``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def sorted_batch(size: int = 12, vocab: int = 50, dim: int = 24, seed: int = 0) -> Batch:
    """Random pairs sorted by caption length (longest first); pairs 4 and 5 share an image, as in real batches."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 15, (size,), generator=gen).sort(descending=True).values
    tokens = torch.randint(4, vocab, (size, int(lengths.max())), generator=gen)
    tokens[torch.arange(tokens.shape[1]) >= lengths[:, None]] = 0
    features = torch.rand(size, 36, dim, generator=gen)
    features[5] = features[4]
    images = torch.arange(size)
    images[5] = 4
    return Batch(features, tokens, lengths, images)
