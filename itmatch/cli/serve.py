"""`itmatch serve`: the search service (JSON API, OpenAPI docs at /docs) and its web page."""

from __future__ import annotations

from pathlib import Path
import os
import signal
from typing import Annotated, Optional

import typer

from itmatch.cli.options import Device


def serve(
    index: Annotated[Path, typer.Option(help="Index folder (`itmatch index build`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    shortlist: Annotated[int, typer.Option(help="Pictures re-ranked per text query.", min=1)] = 100,
    workers: Annotated[int, typer.Option(
        help="Worker processes, each with the index, the models and its own model threads, on one port: on a "
             "machine of several cores, one per core (with --threads 1) answers the most queries.", min=1)] = 1,
    threads: Annotated[Optional[int], typer.Option(
        help="Model threads of each process: this many query batches run at once, one CPU thread each (default "
             "and most: the cores this process may use, shared among the workers).", min=1)] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Largest query picture accepted, in MiB.", min=1)] = 10,
    device: Device = "cpu",
) -> None:
    """Serve an index over HTTP: the web page at /, the API (/search, /search/image, /images/ID, /explain,
    /health) and its documentation at /docs.

    Examples:

      itmatch serve --index index/tuxpaint                     # then open http://127.0.0.1:8000

      itmatch serve --index index/photos --host 0.0.0.0 --port 8080 --shortlist 50

      itmatch serve --index index/photos --workers 2 --threads 1     # two processes on a 2-core machine
    """
    import uvicorn

    from itmatch.search import open_index
    from itmatch.serve.processes import ServeSettings, build_app, check_port, serve_in_processes

    cores = len(os.sched_getaffinity(0))
    if workers > cores:
        typer.echo(f"--workers {workers} is more than the {cores} cores this process may use: serving with "
                   f"{cores} worker processes", err=True)
        workers = cores
    most = max(1, cores // workers)
    if threads is not None and threads > most:
        typer.echo(f"--threads {threads} with {workers} worker process(es) is more than the {cores} cores this "
                   f"process may use: serving with {most} model threads each (more would oversubscribe the cores and "
                   "slow every query)", err=True)
    settings = ServeSettings(index=str(index), shortlist=shortlist, threads=min(threads or most, most),
                             max_upload_bytes=max_upload_mb << 20, device=device)
    opened = open_index(index)  # a bad index or port: one line here, before any worker starts
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL

    def ready() -> None:
        typer.echo(f"serving {index} ({opened.n_images} pictures) at http://{shown}:{port}  (API docs: /docs)"
                   + (f", {workers} worker processes" if workers > 1 else ""))

    if workers > 1:
        check_port(host, port)
        serve_in_processes(settings, workers, host, port, ready)
        return
    app = build_app(settings, opened)
    ready()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    except SystemExit as exc:
        # uvicorn stops gracefully on SIGTERM, then raises the signal again (here a SystemExit, so that writers
        # clean up): a server has no output to speak of, so it ends as after Ctrl-C, with status 0 and no line
        if exc.code != 128 + signal.SIGTERM:
            raise


def register(app: typer.Typer) -> None:
    """Add `itmatch serve` to the top-level app."""
    app.command("serve")(serve)
