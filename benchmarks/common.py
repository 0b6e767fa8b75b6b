"""Helpers shared by the benchmark scripts: peak-RSS sampling, a matmul FLOP/s probe, synthetic captions."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: str | Path, threads: int, options: Sequence[str] = (), wait: float = 120
                 ) -> tuple[subprocess.Popen, int]:
    """`python -m itmatch serve` of ``index`` on a free local port with ``--threads`` and ``OMP_NUM_THREADS``
    ``threads`` (plus ``options``), run from the current folder; returns (process, port) once ``/health``
    answers, or kills it and raises after ``wait`` seconds."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "itmatch", "serve", "--index", str(index), "--port", str(port),
                               "--threads", str(threads), *options],
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not come up in {wait:.0f} s")
