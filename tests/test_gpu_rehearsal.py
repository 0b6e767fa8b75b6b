"""`benchmarks/gpu.py` rehearsed on the CPU (``--device cpu``): every check of the GPU script runs, so that a CUDA
machine's few minutes are not spent finding a broken script; the chance level its ranking check is gated on; and a
check that raises fails alone while the others still run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from itmatch.metrics import retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu import chance_rsum, guarded  # noqa: E402 (benchmarks/ is not a package)


def test_chance_rsum_matches_random_scores() -> None:
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(100), 5)
    drawn = [retrieval_metrics(rng.random((100, 500), dtype=np.float32), caption_image)["rsum"] for _ in range(200)]
    assert abs(np.mean(drawn) - chance_rsum(100, 5)) < 1.0   # the mean of 200 draws: standard error ~0.4
    assert abs(chance_rsum(100, 5) - 31.6) < 0.1


def test_the_gpu_script_runs_every_check_on_the_cpu() -> None:
    command = [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--models", "saf", "--images", "4",
               "--captions", "20", "--cpu-images", "4", "--steps", "1", "--batch-size", "8", "--ranking-images", "100"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0 and out.rstrip().endswith("all checks passed"), out + done.stderr
    assert "PASS saf fp32 cpu = CPU: max|diff| 0.0e+00" in out
    bf16 = float(re.search(r"PASS saf bf16: max\|diff\| from fp32 (\S+)", out).group(1))
    assert 0 < bf16 <= 3e-2  # autocast really ran in bf16, within the stated tolerance
    ranking = re.search(r"PASS saf ranking: 100 test images .* rsum fp32 (\S+), tf32 (\S+), bf16 (\S+) \(tf32 within "
                        r"10\.0, bf16 within 30\.0 of fp32; chance (\S+)\)", out)
    fp32, tf32, bf16_rsum, chance = map(float, ranking.groups())
    assert fp32 > 4 * chance  # one epoch learned the planted data, so the rsums can show precision effects
    assert tf32 == fp32 and abs(bf16_rsum - fp32) <= 30.0  # tf32 is fp32 on a CPU; bf16 within the scaled tolerance
    for name in ("sgr", "saf"):
        assert f"PASS {name} training gradients cpu = cpu" in out and f"PASS {name} training step: batch 8" in out
    assert re.search(r"PASS DDP 2 CPU processes \(gloo\): .* max\|param difference\| between ranks 0\.0e\+00", out)


def test_a_check_that_raises_fails_alone_and_the_next_one_runs(capsys) -> None:
    failures: list[str] = []
    ran = []
    guarded("broken", failures, lambda: 1 / 0)
    guarded("next", failures, ran.append, "next")
    assert failures == ["broken"] and ran == ["next"]
    assert "FAIL broken: raised ZeroDivisionError: division by zero" in capsys.readouterr().out
