"""`torchrun --nproc_per_node 2 -m itmatch evaluate` (gloo, CPU) equals one process: each process scores a share
of every block's images, rank 0 gathers the rows, evaluates, and writes the report and the score matrices once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model

from itmatch.checkpoint import save_model
from itmatch.cli import main
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import load_vocab
from itmatch.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun_itmatch(*args: object) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m itmatch ARGS` on the CPU, one thread per process; fails loudly."""
    command = [*TORCHRUN, "-m", "itmatch", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """13 test images (shares of 7 and 6), 5,000 testall images (coco1k), and small SGR, SAF and VSE files."""
    root = tmp_path_factory.mktemp("dist-eval")
    data = write_synthetic(root / "data", n_images={"train": 4, "dev": 4, "test": 13, "testall": 5000},
                           feature_dim=SMALL["img_dim"])
    vocab = load_vocab(data / "vocab.json")
    torch.manual_seed(2)
    models = {"sgr": small_model("sgr", seed=0, vocab_size=len(vocab)),
              "saf": small_model("saf", seed=1, vocab_size=len(vocab)),
              "vse": create_model("vse", vocab_size=len(vocab), img_dim=SMALL["img_dim"], embed_size=32,
                                  word_dim=12).eval()}
    files = {name: root / f"{name}.safetensors" for name in models}
    for name, model in models.items():
        save_model(files[name], model, vocab=vocab.to_json())
    return data, files


def one_and_two(tmp_path: Path, *args: object) -> tuple[dict, dict, Path, Path]:
    """The result JSON and --save-sims path of one process and of two (torchrun) on the same arguments."""
    outputs = []
    for run in ("one", "two"):
        report, sims = tmp_path / f"{run}.json", tmp_path / f"{run}.npy"
        full = ["evaluate", *map(str, args), "--output", str(report), "--save-sims", str(sims), "--no-progress"]
        if run == "one":  # at the torchrun processes' one thread: BLAS then sums in the same order on both sides
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert main(full) == 0
            finally:
                torch.set_num_threads(threads)
        else:
            done = torchrun_itmatch(*full)
            assert done.stdout.count("rsum") == 1  # rank 0 alone reports
        outputs.append((json.loads(report.read_text()), sims))
    (one, one_sims), (two, two_sims) = outputs
    return one, two, one_sims, two_sims


def test_sgr_two_processes_equal_one(dataset, tmp_path: Path) -> None:
    data, files = dataset
    one, two, one_sims, two_sims = one_and_two(tmp_path, "--data", data, "--checkpoint", files["sgr"])
    a, b = np.load(one_sims), np.load(two_sims)
    assert a.shape == b.shape == (13, 65)
    assert float(np.abs(a - b).max()) <= 1e-6
    assert one == two  # identical metrics, and the same sources


def test_ensemble_two_processes_equal_one(dataset, tmp_path: Path) -> None:
    data, files = dataset
    one, two, one_sims, two_sims = one_and_two(tmp_path, "--data", data, "--checkpoint", files["sgr"],
                                               "--checkpoint", files["saf"], "--checkpoint", files["vse"])
    a, b = np.load(one_sims), np.load(two_sims)
    assert float(np.abs(a - b).max()) <= 1e-6
    assert one == two and len(one["sources"]) == 3


def test_coco1k_two_processes_equal_one(dataset, tmp_path: Path) -> None:
    data, files = dataset
    one, two, one_sims, two_sims = one_and_two(tmp_path, "--data", data, "--split", "testall", "--protocol",
                                               "coco1k", "--checkpoint", files["vse"])
    for k in range(5):
        a, b = np.load(one_sims.with_suffix(f".fold{k}.npy")), np.load(two_sims.with_suffix(f".fold{k}.npy"))
        assert a.shape == b.shape == (1000, 5000)
        assert float(np.abs(a - b).max()) <= 1e-6
    assert one == two and len(two["folds"]) == 5


def test_image_shares_cover_every_row_once_in_equal_parts() -> None:
    from itmatch.evaluate import image_shares

    blocks = [(np.arange(k * 1000, (k + 1) * 1000), np.arange(k * 5000, (k + 1) * 5000)) for k in range(5)]
    shares = image_shares(blocks, 2)
    assert [sum(len(images) for images, _ in share) for share in shares] == [2500, 2500]
    assert [[len(images) for images, _ in share] for share in shares] == [[1000, 1000, 500, 0, 0],
                                                                          [0, 0, 500, 1000, 1000]]
    for b, (images, captions) in enumerate(blocks):
        np.testing.assert_array_equal(np.concatenate([share[b][0] for share in shares]), images)
        assert all(share[b][1] is captions for share in shares)
    assert [len(share[0][0]) for share in image_shares(blocks[:1], 3)] == [333, 334, 333]
