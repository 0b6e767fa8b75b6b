"""The searches: ``GET /search`` (pictures for a text, micro-batched) and ``POST /search/image`` (captions for an
uploaded picture, decoded small on the picture thread)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import cv2
from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import JSONResponse

from itmatch.errors import ItmatchError
from itmatch.features.images import UnreadableImage, decode_image, reduction
from itmatch.fileio import scratch_dir
from itmatch.serve.errors import ApiError, as_api_error
from itmatch.serve.schema import BAD_PARAMETER, PictureAnswer, TextAnswer, answers, query_schema
from itmatch.serve.service import QUERY_FOLDER, Service
from itmatch.serve.uploads import UploadRejected, check_upload


def describe(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit as the API shows it: the file's name, not its path on the server."""
    shown = {k: v for k, v in hit.items() if k != "path"}
    shown["name"] = Path(hit["path"]).name if hit.get("path") else None
    shown["thumbnail"] = f"/images/{hit['image']}"
    return shown


def router(service: Service) -> APIRouter:
    """The text and picture searches of ``service``."""
    routes = APIRouter()
    searcher, limits, shortlist = service.searcher, service.limits, service.shortlist

    @routes.get("/search", summary="Pictures for a text query (two-stage: shortlist by embedding, then re-rank)",
                responses=answers(TextAnswer,
                                  e422=f"{BAD_PARAMETER}, or the query is empty, too long or has no known word"))
    async def search(q: str = Query(..., description=f"the query, at most {limits.max_query_chars} characters",
                                    json_schema_extra=query_schema(limits.max_query_chars)),
                     top: int = Query(12, ge=1, le=limits.max_top, description="how many pictures")
                     ) -> JSONResponse:
        text = service.query_text(q)
        try:
            result = await service.batcher.submit(text, top)
        except ItmatchError as exc:
            raise as_api_error(exc) from None
        # A JSONResponse skips FastAPI's generic encoder: the answer is plain JSON types already.
        return JSONResponse({"query": text, "candidates": result.candidates, "ms": round(1000 * result.seconds, 1),
                             "results": [describe(hit) for hit in result.hits]})

    def query_picture(data: bytes, width: int, height: int) -> bytes:
        """The upload decoded at the size the detector needs, as a BMP file (lossless, no compression work)."""
        picture = decode_image(data, "the picture", reduction(width, height, limits.query_side))
        return cv2.imencode(".bmp", picture)[1].tobytes()

    @routes.post("/search/image", summary="Captions for an uploaded picture (JPEG, PNG or WebP)",
                 responses=answers(PictureAnswer, e409="the index cannot answer picture queries",
                                   e413=f"the upload is over {limits.max_upload_bytes} bytes",
                                   e415=f"not a JPEG, PNG or WebP picture, over {limits.max_upload_pixels} pixels, "
                                        "or cannot be decoded", e422=BAD_PARAMETER))
    async def search_image(file: UploadFile = File(..., description="the query picture"),
                           top: int = Query(12, ge=1, le=limits.max_top)) -> dict[str, Any]:
        problem = service.searcher.picture_query_problem()
        if problem is not None:
            raise ApiError(409, f"this index cannot answer picture queries: {problem}")
        data = await file.read(limits.max_upload_bytes + 1)
        try:
            width, height = check_upload(data, limits.max_upload_bytes, limits.max_upload_pixels)
            small = await asyncio.get_running_loop().run_in_executor(service.pictures, query_picture, data, width,
                                                                     height)
        except UploadRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        except UnreadableImage:
            raise ApiError(415, "the picture cannot be decoded (cut short or damaged?); send a complete JPEG, PNG or "
                                "WebP file") from None
        with scratch_dir(QUERY_FOLDER) as folder:
            path = folder / "query.bmp"
            path.write_bytes(small)
            try:
                result = await service.on_model_thread(functools.partial(searcher.search_picture, top=top,
                                                                         shortlist=shortlist), path)
            except ApiError as exc:  # never show the server's paths
                raise ApiError(exc.status, str(exc).replace(str(path), "the picture")) from None
        return {"candidates": result.candidates, "ms": round(1000 * result.seconds, 1),
                "results": [describe(hit) for hit in result.hits]}

    return routes
