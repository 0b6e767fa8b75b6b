"""The HTTP service of `itmatch serve`: a JSON API over one index's ``Searcher`` and the web page in ``static/``.

Model calls run on a fixed set of worker threads (``workers``, one per core under `itmatch serve`), so concurrent
requests queue instead of splitting the CPU between many half-finished computations (and PyTorch's threads are not
oversubscribed); the workers share one ``Searcher`` and its models. Query
pictures are decoded on a thread of their own, at the size the detector needs (a JPEG is decoded at 1/2, 1/4 or 1/8
of its size directly), so a big picture neither fills the memory nor holds up text queries; an upload over the
size limit is refused before it is read. Thumbnails are made on other threads and cached. Every refused request gets
a 4xx answer ``{"error": "what is wrong and what to do"}``, as the OpenAPI schema documents.

``create_app`` only wires the parts: the shared state (``service.py``), the error handlers (``errors.py``) and one
router per concern (``routes/``: the page, health, search, images, explain).
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from itmatch.search.searcher import Searcher
from itmatch.serve.errors import add_error_handlers
from itmatch.serve.routes import explain, health, images, page, search
from itmatch.serve.service import Limits, Service
from itmatch.serve.uploads import BodyLimit, too_large

#: Room for the multipart framing around an uploaded file.
MULTIPART_OVERHEAD = 16 << 10


def create_app(searcher: Searcher, *, shortlist: int = 100, workers: int = 1, limits: Limits | None = None
               ) -> FastAPI:
    """The FastAPI app serving ``searcher``'s index; ``shortlist`` pictures are re-ranked per text query, and the
    model work runs on ``workers`` threads (give PyTorch one thread each: ``torch.set_num_threads(1)``)."""
    limits = limits or Limits()
    service = Service(searcher, shortlist, workers, limits)
    index = searcher.index

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="itmatch search", summary="Two-stage image-text search over one index", lifespan=lifespan,
                  description=f"{index.n_images} pictures, {index.n_captions} captions; models "
                              f"{searcher.model_names}. Errors are JSON: {{\"error\": \"...\"}}.")
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + MULTIPART_OVERHEAD, paths=("/search/image",),
                       message=too_large(limits.max_upload_bytes))
    add_error_handlers(app)
    app.include_router(page.router())
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    for routes in (health, search, images, explain):
        app.include_router(routes.router(service))
    return app
