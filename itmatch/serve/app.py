"""The HTTP service of `itmatch serve`: a JSON API over one index's ``Searcher`` and the web page in ``static/``.

Every model call runs on one worker thread, one request after another, so concurrent requests queue instead of
splitting the CPU between many half-finished computations (and PyTorch's threads are not oversubscribed). Query
pictures are decoded on a thread of their own, at the size the detector needs (a JPEG is decoded at 1/2, 1/4 or 1/8
of its size directly), so a big picture neither fills the memory nor holds up text queries; an upload over the
size limit is refused before it is read. Thumbnails are made on other threads and cached. Every refused request gets
a 4xx answer ``{"error": "what is wrong and what to do"}``, as the OpenAPI schema documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import cv2
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from itmatch.errors import ItmatchError
from itmatch.features.images import UnreadableImage, decode_image, load_image, reduction
from itmatch.features.thumbnail import shrink
from itmatch.search.gallery import check_image_id
from itmatch.search.searcher import Searcher
from itmatch.serve.batching import QueryBatcher
from itmatch.serve.schema import (
    BAD_PARAMETER,
    BLANK,
    Explanation,
    Health,
    PictureAnswer,
    TextAnswer,
    answers,
    query_schema,
)
from itmatch.serve.uploads import BodyLimit, UploadRejected, check_upload, too_large

STATIC = Path(__file__).parent / "static"


@dataclasses.dataclass
class Limits:
    """What a request may ask for."""

    max_query_chars: int = 200
    max_top: int = 100
    max_upload_bytes: int = 10 << 20
    max_upload_pixels: int = 16_000_000
    #: a query picture is decoded at the smallest size whose sides are still this long (the detector reads 300)
    query_side: int = 300
    thumbnail_sizes: tuple[int, ...] = (256, 640)
    thumbnails_cached: int = 1024


#: Room for the multipart framing around an uploaded file.
MULTIPART_OVERHEAD = 16 << 10


class ApiError(Exception):
    """A refused request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(searcher: Searcher, *, shortlist: int = 100, workers: int = 1, limits: Limits | None = None
               ) -> FastAPI:
    """The FastAPI app serving ``searcher``'s index; ``shortlist`` pictures are re-ranked per text query, and the
    model work runs on ``workers`` threads (give PyTorch one thread each: ``torch.set_num_threads(1)``)."""
    limits = limits or Limits()
    index = searcher.index
    worker = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="itmatch-model")
    pictures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmatch-picture")  # one decode at a time
    batcher = QueryBatcher(lambda queries, top: searcher.search_texts(queries, top=top, shortlist=shortlist),
                           worker, workers)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown(wait=False, cancel_futures=True)
        pictures.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="itmatch search", summary="Two-stage image-text search over one index", lifespan=lifespan,
                  description=f"{index.n_images} pictures, {index.n_captions} captions; models "
                              f"{searcher.model_names}. Errors are JSON: {{\"error\": \"...\"}}.")
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + MULTIPART_OVERHEAD, paths=("/search/image",),
                       message=too_large(limits.max_upload_bytes))

    async def on_model_thread(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(worker, functools.partial(function, *args))
        except (UnreadableImage, ItmatchError) as exc:
            raise as_api_error(exc) from None

    def as_api_error(exc: Exception) -> ApiError:
        return ApiError(415 if isinstance(exc, UnreadableImage) else 422, str(exc))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    def query_text(q: str) -> str:
        """``q`` stripped, as ``query_schema`` describes it."""
        if len(q) > limits.max_query_chars:
            raise ApiError(422, f"q: the query is longer than {limits.max_query_chars} characters; shorten it")
        q = q.strip(BLANK)
        if not q:
            raise ApiError(422, "q: the query is empty; type a few words")
        return q

    def image_id(image: int) -> int:
        try:
            return check_image_id(image, index.n_images)
        except ItmatchError as exc:
            raise ApiError(404, str(exc)) from None

    def describe(hit: dict[str, Any]) -> dict[str, Any]:
        """A hit as the API shows it: the file's name, not its path on the server."""
        shown = {k: v for k, v in hit.items() if k != "path"}
        shown["name"] = Path(hit["path"]).name if hit.get("path") else None
        shown["thumbnail"] = f"/images/{hit['image']}"
        return shown

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Service status and what the index holds", responses=answers(Health))
    async def health() -> dict[str, Any]:
        return {"status": "ok", "images": index.n_images, "captions": index.n_captions,
                "models": searcher.model_names, "shortlist": shortlist,
                "explain": any(m.can_explain for m, _ in searcher.rerankers),
                "picture_queries": bool(index.meta.get("extractor")) and index.n_captions > 0}

    @app.get("/search", summary="Pictures for a text query (two-stage: shortlist by embedding, then re-rank)",
             responses=answers(TextAnswer, e422=f"{BAD_PARAMETER}, or the query is empty or too long"))
    async def search(q: str = Query(..., description=f"the query, at most {limits.max_query_chars} characters",
                                    json_schema_extra=query_schema(limits.max_query_chars)),
                     top: int = Query(12, ge=1, le=limits.max_top, description="how many pictures")
                     ) -> JSONResponse:
        text = query_text(q)
        try:
            result = await batcher.submit(text, top)
        except ItmatchError as exc:
            raise as_api_error(exc) from None
        # A JSONResponse skips FastAPI's generic encoder: the answer is plain JSON types already.
        return JSONResponse({"query": text, "candidates": result.candidates, "ms": round(1000 * result.seconds, 1),
                             "results": [describe(hit) for hit in result.hits]})

    def query_picture(data: bytes, width: int, height: int) -> bytes:
        """The upload decoded at the size the detector needs, as a BMP file (lossless, no compression work)."""
        picture = decode_image(data, "the picture", reduction(width, height, limits.query_side))
        return cv2.imencode(".bmp", picture)[1].tobytes()

    @app.post("/search/image", summary="Captions for an uploaded picture (JPEG, PNG or WebP)",
              responses=answers(PictureAnswer, e409="the index cannot answer picture queries",
                               e413=f"the upload is over {limits.max_upload_bytes} bytes",
                               e415=f"not a JPEG, PNG or WebP picture, over {limits.max_upload_pixels} pixels, or "
                                    "cannot be decoded", e422=BAD_PARAMETER))
    async def search_image(file: UploadFile = File(..., description="the query picture"),
                           top: int = Query(12, ge=1, le=limits.max_top)) -> dict[str, Any]:
        if not (index.meta.get("extractor") and index.n_captions):
            raise ApiError(409, "this index cannot answer picture queries: it has no captions or its features "
                                "were not made by a picture extractor")
        data = await file.read(limits.max_upload_bytes + 1)
        try:
            width, height = check_upload(data, limits.max_upload_bytes, limits.max_upload_pixels)
            small = await asyncio.get_running_loop().run_in_executor(pictures, query_picture, data, width, height)
        except UploadRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        except UnreadableImage:
            raise ApiError(415, "the picture cannot be decoded (cut short or damaged?); send a complete JPEG, PNG or "
                                "WebP file") from None
        with tempfile.TemporaryDirectory(prefix="itmatch-query-") as folder:
            path = Path(folder) / "query.bmp"
            path.write_bytes(small)
            try:
                result = await on_model_thread(functools.partial(searcher.search_picture, top=top,
                                                                 shortlist=shortlist), path)
            except ApiError as exc:  # never show the server's paths
                raise ApiError(exc.status, str(exc).replace(str(path), "the picture")) from None
        return {"candidates": result.candidates, "ms": round(1000 * result.seconds, 1),
                "results": [describe(hit) for hit in result.hits]}

    @functools.lru_cache(maxsize=limits.thumbnails_cached)
    def thumbnail(image: int, size: int) -> bytes | None:
        picture = index.pictures[image]
        path = picture.get("path")
        if not path or not os.path.isfile(path):
            return None
        width, height = picture.get("width"), picture.get("height")
        reduce = reduction(width, height, size) if width and height else 1  # a big photo is decoded small
        ok, encoded = cv2.imencode(".jpg", shrink(load_image(path, reduce), size), [cv2.IMWRITE_JPEG_QUALITY, 88])
        return encoded.tobytes() if ok else None

    @app.get("/images/{image}", summary="A picture of the index as a JPEG thumbnail", response_class=Response,
             responses={**answers(None, e404="no such picture, or it has no readable file",
                                  e422=f"{BAD_PARAMETER}, or size is not one of {limits.thumbnail_sizes}"),
                        200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"}})
    async def image_file(image: int = PathParam(..., ge=0, description="the picture's id in the index"),
                         size: int = Query(limits.thumbnail_sizes[0], description=f"longest side: one of "
                                                                                  f"{limits.thumbnail_sizes}",
                                           json_schema_extra={"enum": list(limits.thumbnail_sizes)})
                         ) -> Response:
        image_id(image)
        if size not in limits.thumbnail_sizes:
            raise ApiError(422, f"size: choose one of {', '.join(map(str, limits.thumbnail_sizes))}")
        try:
            data = await run_in_threadpool(thumbnail, image, size)
        except UnreadableImage:
            data = None
        if data is None:
            raise ApiError(404, f"image {image} has no readable picture file (features only, or the file moved)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/explain", summary="What each word of q looks at in a picture (attention data)",
             responses=answers(Explanation, e404="no such picture",
                               e422=f"{BAD_PARAMETER}, the text is empty or too long, or no model of the index can "
                                    "explain"))
    async def explain(image: int = Query(..., ge=0, description="the picture's id"),
                      q: str = Query(..., description="the text",
                                     json_schema_extra=query_schema(limits.max_query_chars))) -> dict[str, Any]:
        text = query_text(q)
        data = await on_model_thread(searcher.explain, image_id(image), text)
        data.pop("path", None)
        return data

    return app
