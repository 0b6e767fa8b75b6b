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

import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fastapi import FastAPI

from itmatch.errors import ItmatchError

if TYPE_CHECKING:
    from itmatch.search.index import Index


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """What each process of the service needs to build its app."""

    index: str
    shortlist: int
    threads: int            # model threads of one process
    max_upload_bytes: int
    device: str


def build_app(settings: ServeSettings, index: Index | None = None) -> FastAPI:
    """The service app of ``settings`` in this process (over ``index`` if the caller has it open already): PyTorch and
    FAISS at one intra-op thread (parallel queries, not parallel small operations, so that processes x model threads x 1
    stays within the cores). tqdm, whose hidden bars the engine makes, gets a thread lock instead of its default
    inter-process one: a worker process ends by its signal, and the semaphore of that lock would be left to Python's
    resource tracker, which warns."""
    import threading

    import faiss
    import torch
    from tqdm import tqdm

    from itmatch.search import Searcher
    from itmatch.serve.app import Limits, create_app

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    tqdm.set_lock(threading.RLock())
    searcher = Searcher(index or Path(settings.index), device=settings.device)
    return create_app(searcher, shortlist=settings.shortlist, workers=settings.threads,
                      limits=Limits(max_upload_bytes=settings.max_upload_bytes))


def serve_in_processes(settings: ServeSettings, workers: int, host: str, port: int,
                       ready: Callable[[], None]) -> None:
    """Serve ``settings`` from ``workers`` processes on ``host:port`` until SIGTERM or Ctrl-C (each then shuts down
    gracefully); ``ready()`` is called once every worker has its app and its socket. A worker that cannot start (its
    one-line error) or that ends by itself stops the others and raises. Check the port first (``check_port``)."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked copy of PyTorch's threads
    channels = [context.Pipe(duplex=False) for _ in range(workers)]
    processes = [context.Process(target=_worker, args=(settings, host, port, os.getpid(), send),
                                 name=f"itmatch-serve-{n}") for n, (_, send) in enumerate(channels)]
    stop: list[int] = []

    def on_signal(number: int, frame: object) -> None:
        stop.append(number)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    failure = None
    try:
        # The workers start with Ctrl-C ignored (an ignored signal stays ignored through spawn's exec): one pressed
        # while they import would end each in a traceback. uvicorn handles it while they serve; the parent stops
        # them either way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for process in processes:
                process.start()
        finally:
            signal.signal(signal.SIGINT, on_signal)
        for _, send in channels:
            send.close()  # each pipe stays open through its worker's end alone: a worker that dies closes it
        failure = _started({receive: process for (receive, _), process in zip(channels, processes)}, stop)
        if failure is None and not stop:
            ready()
        while failure is None and not stop:
            multiprocessing.connection.wait([process.sentinel for process in processes], timeout=0.5)
            ended = next((process for process in processes if not process.is_alive()), None)
            if ended is not None:
                failure = f"a worker process of the service ended (exit code {ended.exitcode}); stopped the others"
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests under way
        for process in processes:
            if process.pid is not None:  # started (a signal may come while they start)
                process.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if failure is not None:
        raise ItmatchError(failure)


def _started(waiting: dict[Connection, BaseProcess], stop: list[int]) -> str | None:
    """Wait until every worker reports (None: ready) or one fails (its error) or a signal came (``stop``)."""
    while waiting and not stop:
        for receive in multiprocessing.connection.wait(list(waiting), timeout=0.5):
            process = waiting.pop(receive)
            try:
                message = receive.recv()
            except EOFError:  # it died before reporting (its message, if any, is above)
                process.join()
                return f"a worker process of the service ended while starting (exit code {process.exitcode})"
            if message is not None:
                return message
    return None


def check_port(host: str, port: int) -> None:
    """Raise a one-line error if ``host:port`` is taken, by any server (this check binds without
    ``SO_REUSEPORT``: it also fails beside another service's workers, which set it)."""
    _bound_socket(host, port, reuse_port=False).close()


def _bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port``; with ``reuse_port`` bound with ``SO_REUSEPORT``, so that every worker
    binds its own and the kernel spreads the connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ItmatchError(f"cannot listen on {host}:{port}: {exc.strerror}; give another --port or --host") from None
    return sock


def _worker(settings: ServeSettings, host: str, port: int, parent: int, report: Connection) -> None:
    """One worker process: reports None (ready) or its one-line error to the parent, then serves on its own socket
    until stopped."""
    _stop_with(parent)
    import uvicorn

    try:
        sock = _bound_socket(host, port, reuse_port=True)
        app = build_app(settings)
    except ItmatchError as exc:
        report.send(str(exc))
        return
    report.send(None)
    report.close()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def _stop_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when the service's process ends, even by SIGKILL (Linux's
    ``PR_SET_PDEATHSIG``), so that no worker outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the call
        raise SystemExit(0)
