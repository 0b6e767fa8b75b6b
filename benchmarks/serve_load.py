"""Load on `itmatch serve` over loopback: N text queries, C at a time, against a 10,000-picture synthetic gallery.

Builds once (kept in ``--work``) a planted synthetic gallery (``--images`` pictures, 36 regions × 256 dims, 5
captions each) and an index with random models at the `make demo` sizes: VSE (embed 128) shortlists, SGR and/or SAF
(embed 128, sim 64) re-rank; the weights do not change the work a query costs. Then starts `itmatch serve` in its
own process — by default one worker process per core with one model thread each (``--workers``, ``--threads``; the
model threads of one process share Python's interpreter lock) — and sends ``--requests`` ``GET
/search?q=...&top=12`` from ``--concurrency`` clients that each send their next request when the last one is
answered; the queries are random captions of the gallery. The clients speak minimal HTTP/1.1 over asyncio streams
(keep-alive): httpx's client costs about 4.5 ms of CPU per request here, more than the server's HTTP layer, and
would mostly measure itself. Client and server share the machine's cores. Prints errors, throughput, the client-side
latency percentiles and the CPU time each side used per request.

    python benchmarks/serve_load.py                                   # 1,000 requests, 50 concurrent, shortlist 100
    python benchmarks/serve_load.py --workers 1 --threads 2          # one process of two model threads
    python benchmarks/serve_load.py --shortlist 20 --rerankers sgr
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from common import start_server

from itmatch.checkpoint import save_model
from itmatch.data import write_synthetic
from itmatch.data.precomp import read_captions
from itmatch.data.vocab import build_vocab
from itmatch.models import create_model
from itmatch.search import build_index

DEMO_SIZES = {"word_dim": 50, "embed_size": 128}
FEATURE_DIM = 256


def gallery_index(work: Path, images: int, rerankers: list[str]) -> Path:
    """The synthetic gallery and an index of it with ``rerankers`` (built the first time, then reused)."""
    data = work / f"data-{images}"
    if not (data / "test_caps.txt").is_file():
        write_synthetic(data, n_images={"test": images, "dev": 10}, feature_dim=FEATURE_DIM, seed=0)
    index = work / f"index-{images}-{'+'.join(rerankers) or 'none'}"
    if not (index / "index.json").is_file():
        # the gallery's own captions: the queries are drawn from them, and a query with no known word is a 422
        vocab = build_vocab(read_captions(data / "test_caps.txt"))
        torch.manual_seed(0)
        paths = {}
        for name in ["vse", *rerankers]:
            extra = {} if name == "vse" else {"sim_dim": 64}
            paths[name] = work / f"{name}.safetensors"
            model = create_model(name, img_dim=FEATURE_DIM, vocab_size=len(vocab), **DEMO_SIZES, **extra)
            save_model(paths[name], model, vocab=vocab.to_json())
        build_index(data, index, split="test", embedder=paths["vse"], rerankers=[paths[n] for n in rerankers],
                    progress=True)
    return index


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process and of its running children (the worker processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on a kept-alive connection: (status, body)."""
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def run_load(port: int, queries: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """Send every query, ``concurrency`` connections each with one request in flight; latencies in seconds,
    errors (a connection failure, a status other than 200, or no results), wall seconds."""
    latencies: list[float] = []
    errors = 0
    pending = iter(queries)

    async def client_loop() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for query in pending:
            start = time.perf_counter()
            try:
                status, body = await get(reader, writer, f"/search?q={quote(query)}&top=12")
                failed = status != 200 or not json.loads(body)["results"]
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failed = True
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append(time.perf_counter() - start)
            errors += failed
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/itmatch-serve-load"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rerankers", nargs="*", default=["sgr", "saf"], choices=["sgr", "saf", "tshsr"])
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="worker processes of the server (default: one per core)")
    parser.add_argument("--threads", type=int, default=1, help="model threads of each worker process")
    args = parser.parse_args()

    index = gallery_index(args.work, args.images, args.rerankers)
    captions = read_captions(args.work / f"data-{args.images}" / "test_caps.txt")
    rng = np.random.default_rng(0)
    queries = [captions[i] for i in rng.integers(0, len(captions), args.requests)]
    server, port = start_server(index, args.threads, ["--shortlist", str(args.shortlist), "--workers",
                                                      str(args.workers)])
    try:
        warm_errors = asyncio.run(run_load(port, queries[:args.concurrency], args.concurrency))[1]  # not timed
        server_cpu, client_cpu = server_cpu_seconds(server.pid), time.process_time()
        latencies, errors, wall = asyncio.run(run_load(port, queries, args.concurrency))
        server_cpu, client_cpu = server_cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
        errors += warm_errors  # a request of the warm-up that failed counts too
    finally:
        server.terminate()
        server.wait(30)
    ms = np.asarray(latencies) * 1000
    print(f"{args.images:,} pictures, shortlist {args.shortlist}, re-rankers {'+'.join(args.rerankers) or 'none'}, "
          f"{args.workers} worker process(es) of {args.threads} model thread(s), {os.cpu_count()} cores shared by "
          "client and server")
    print(f"{len(ms)} requests, {args.concurrency} concurrent: {errors} errors (warm-up included), "
          f"{len(ms) / wall:.0f} requests/s, "
          f"latency p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
          f"p99 {np.percentile(ms, 99):.0f} ms, max {ms.max():.0f} ms; CPU per request: server "
          f"{1000 * server_cpu / len(ms):.1f} ms, client {1000 * client_cpu / len(ms):.1f} ms")
    p50, p95 = np.percentile(ms, 50), np.percentile(ms, 95)
    print(f"targets: p50 {p50:.0f} ms (<= 150: {'met' if p50 <= 150 else 'missed'}), p95 {p95:.0f} ms (<= 250: "
          f"{'met' if p95 <= 250 else 'missed'}), {errors} errors (0: {'met' if not errors else 'missed'})")


if __name__ == "__main__":
    main()
