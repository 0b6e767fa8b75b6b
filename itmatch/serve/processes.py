"""The app of `itmatch serve` in this process, or in each of several worker processes on one port.

Model threads of one process share Python's interpreter lock: the re-rankers' many small operations hand it back and
forth, and at the demo's model sizes a second model thread added CPU time (8.1 against 5.8 ms a request, measured
with `benchmarks/serve_load.py`) without answering more requests. Worker processes each load the index and the
models and run their own model threads, so two processes of one thread use both cores of a 2-core machine. Each
listens on its own socket bound with ``SO_REUSEPORT``, and the kernel spreads new connections evenly over them;
with one shared socket (uvicorn's own ``workers``) the first process to wake accepts every waiting connection, and
50 clients connecting at once were split unevenly enough to double the slower half's latency.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import signal
import socket
from pathlib import Path

from fastapi import FastAPI

from itmatch.errors import ItmatchError


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """What each process of the service needs to build its app."""

    index: str
    shortlist: int
    threads: int            # model threads of one process
    max_upload_bytes: int
    device: str


def build_app(settings: ServeSettings) -> FastAPI:
    """The service app of ``settings`` in this process: PyTorch and FAISS at one intra-op thread (parallel queries,
    not parallel small operations, so that processes x model threads x 1 stays within the cores). tqdm, whose
    hidden bars the engine makes, gets a thread lock instead of its default inter-process one: a worker process
    ends by its signal, and the semaphore of that lock would be left to Python's resource tracker, which warns."""
    import threading

    import faiss
    import torch
    from tqdm import tqdm

    from itmatch.search import Searcher
    from itmatch.serve.app import Limits, create_app

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    tqdm.set_lock(threading.RLock())
    searcher = Searcher(Path(settings.index), device=settings.device)
    return create_app(searcher, shortlist=settings.shortlist, workers=settings.threads,
                      limits=Limits(max_upload_bytes=settings.max_upload_bytes))


def serve_in_processes(settings: ServeSettings, workers: int, host: str, port: int) -> None:
    """Serve ``settings`` from ``workers`` processes on ``host:port`` until SIGTERM or Ctrl-C (then each shuts down
    gracefully); a worker that ends by itself stops the others and raises. Check the port first
    (``check_port``)."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked copy of PyTorch's threads
    processes = [context.Process(target=_worker, args=(settings, host, port), name=f"itmatch-serve-{n}")
                 for n in range(workers)]
    stop: list[int] = []
    previous = {number: signal.signal(number, lambda number, frame: stop.append(number))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.start()
        while not stop and all(process.is_alive() for process in processes):
            multiprocessing.connection.wait([process.sentinel for process in processes], timeout=0.5)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests under way
        for process in processes:
            if process.pid is not None:  # started (a signal may come while they start)
                process.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not stop:
        ended = next(process for process in processes if process.exitcode is not None)
        raise ItmatchError(f"a worker process of the service ended (exit code {ended.exitcode}; its message is "
                           "above); stopped the others")


def check_port(host: str, port: int) -> None:
    """Raise a one-line error if the workers could not listen on ``host:port`` (e.g. another server holds it)."""
    _reusable_socket(host, port).close()


def _reusable_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, so that every worker binds its own."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ItmatchError(f"cannot listen on {host}:{port}: {exc.strerror}; give another --port or --host") from None
    return sock


def _worker(settings: ServeSettings, host: str, port: int) -> None:
    """One worker process: the app and uvicorn on its own socket."""
    import uvicorn

    sock = _reusable_socket(host, port)
    config = uvicorn.Config(build_app(settings), log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: uvicorn has shut down, no traceback
        pass
