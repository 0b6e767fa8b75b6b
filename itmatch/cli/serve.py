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
    threads: Annotated[Optional[int], typer.Option(
        help="Model threads: this many query batches run at once, one CPU thread each (default and most: one "
             "per core this process may use).", min=1)] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Largest query picture accepted, in MiB.", min=1)] = 10,
    device: Device = "cpu",
) -> None:
    """Serve an index over HTTP: the web page at /, the API (/search, /search/image, /images/ID, /explain,
    /health) and its documentation at /docs.

    Examples:

      itmatch serve --index index/tuxpaint                     # then open http://127.0.0.1:8000

      itmatch serve --index index/photos --host 0.0.0.0 --port 8080 --shortlist 50
    """
    import faiss
    import torch
    import uvicorn

    from itmatch.search import Searcher
    from itmatch.serve.app import Limits, create_app

    cores = len(os.sched_getaffinity(0))
    if threads is not None and threads > cores:
        typer.echo(f"--threads {threads} is more than the {cores} cores this process may use: serving with "
                   f"{cores} model threads (more would oversubscribe the cores and slow every query)", err=True)
    torch.set_num_threads(1)  # parallel queries, not parallel small operations: model threads x 1 <= cores
    faiss.omp_set_num_threads(1)
    searcher = Searcher(index, device=device)
    app = create_app(searcher, shortlist=shortlist, workers=min(threads or cores, cores),
                     limits=Limits(max_upload_bytes=max_upload_mb << 20))
    typer.echo(f"serving {index} ({searcher.index.n_images} pictures) at http://{host}:{port}  (API docs: /docs)")
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
