"""Helpers shared by the benchmark scripts: peak-RSS sampling, a matmul FLOP/s probe, synthetic captions, a local
`itmatch serve`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from local_server import free_port, serving  # noqa: E402 -- from tests/, put on the path just above


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss() -> Iterator[dict]:
    """Sample RSS every 20 ms while the block runs; yields a dict that gets ``peak`` and ``start`` (bytes)."""
    result = {"start": rss_bytes(), "peak": rss_bytes()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], rss_bytes())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], rss_bytes())


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 FLOP/s of a large square matmul on this machine (the attainable ceiling)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - start)


def flickr_like_captions(n: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Random token captions with Flickr30K-like lengths (about 12 words plus <start>/<end>, 3..40 tokens)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(14.3, 4.0, n).round().astype(int), 3, 40)
    return [[1] + rng.integers(4, vocab_size, n - 2).tolist() + [2] for n in lengths]


def start_server(index: str | Path, threads: int, options: Sequence[str] = (), wait: float = 120
                 ) -> tuple[subprocess.Popen, int]:
    """`python -m itmatch serve` of ``index`` on a free local port with ``--threads`` and ``OMP_NUM_THREADS``
    ``threads`` (plus ``options``), run from the current folder; returns (process, port) once ``/health``
    answers, or kills it and raises after ``wait`` seconds."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "itmatch", "serve", "--index", str(index), "--port", str(port),
                               "--threads", str(threads), *options],
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    if not serving(f"http://127.0.0.1:{port}", server, wait):
        server.kill()
        raise RuntimeError(f"the server did not come up in {wait:.0f} s (or it ended)")
    return server, port
