"""`torchrun --nproc_per_node 2 -m itmatch extract` (gloo, CPU): the pictures shared out across the processes,
merged into the same features folder as one process writes, bit for bit; a process killed mid-run and the
run started again finishes with the same arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from itmatch.features import open_features

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("digest_extractor.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ARRAYS = ("features", "boxes", "labels", "scores")


def extract(pictures: Path, out: Path, *, processes: int, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`itmatch extract --extractor digest` over ``pictures`` in one process or two (torchrun)."""
    launcher = TORCHRUN if processes == 2 else [sys.executable]
    command = [*launcher, str(SCRIPT), "extract", "--images", str(pictures), "--out", str(out), "--extractor",
               "digest", "--regions", "5", "--batch-size", "2", "--no-progress"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """23 small files with picture names (the digest extractor never decodes them): shares of 12 and 11."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(23):
        (folder / f"p{i:03d}.png").write_bytes(rng.bytes(int(rng.integers(50, 500))))
    return folder


@pytest.fixture(scope="module")
def one_process(pictures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "features"
    done = extract(pictures, out, processes=1)
    assert done.returncode == 0, done.stderr
    return out


def assert_same_folder(a: Path, b: Path) -> None:
    one, two = open_features(a), open_features(b)
    for name in ARRAYS:
        left, right = np.asarray(getattr(one, name)), np.asarray(getattr(two, name))
        assert left.dtype == right.dtype and left.shape == right.shape and left.tobytes() == right.tobytes(), name
    assert one.images == two.images and one.info == two.info
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())  # no shards left behind


def test_two_processes_equal_one(pictures: Path, one_process: Path, tmp_path: Path) -> None:
    done = extract(pictures, tmp_path / "two", processes=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote") == 1 and "23 extracted, 0 reused" in done.stdout  # rank 0 reports for all
    assert_same_folder(one_process, tmp_path / "two")
    again = extract(pictures, tmp_path / "two", processes=2)  # finished: nothing extracted again
    assert again.returncode == 0 and "0 extracted, 23 reused" in again.stdout


@pytest.mark.parametrize("resume_with", [2, 1])
def test_killed_process_resumes_to_the_same_arrays(pictures: Path, one_process: Path, tmp_path: Path,
                                                   resume_with: int) -> None:
    out = tmp_path / "two"
    killed = extract(pictures, out, processes=2, env={"DIGEST_KILL_RANK": "1", "DIGEST_KILL_AFTER": "4"})
    assert killed.returncode != 0
    assert not (out / "extractor.json").exists()
    shard = out / ".shards" / "1-of-2" / ".partial" / "done.log"
    assert len(shard.read_text().splitlines()) == 4  # rank 1 got 4 of its 11 pictures done before the kill
    resumed = extract(pictures, out, processes=resume_with)  # the same command again, or one process
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "extractor.json").read_text())["count"] == 23
    # rank 1's 4 finished pictures (and whatever rank 0 finished before it was stopped) are not extracted again
    extracted = int(resumed.stdout.split(" extracted")[0].rsplit("(", 1)[1])
    assert extracted <= 23 - 4
    assert_same_folder(one_process, out)


def test_data_build_manifest_on_two_processes_equals_one(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(1)
    lines = []
    for i in range(12):  # decodable pictures: the manifest check decodes every one
        cv2.imwrite(str(tmp_path / f"p{i:02d}.png"), rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8))
        lines.append(json.dumps({"image": f"p{i:02d}.png", "captions": [f"picture number {i}", "a small square"]}))
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        command = [*launcher, str(SCRIPT), "data", "build", "manifest", "--manifest", str(manifest), "--out",
                   str(tmp_path / key), "--features", str(tmp_path / f"features-{key}"), "--extractor", "digest",
                   "--split", "0.5/0.25/0.25", "--no-progress"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("wrote") == 1 and "(12 pictures extracted" in done.stdout  # rank 0 reports all
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for path in one.iterdir():
        assert path.read_bytes() == (two / path.name).read_bytes(), path.name
