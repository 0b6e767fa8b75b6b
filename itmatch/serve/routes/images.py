"""``GET /images/{image}``: a picture of the index as a JPEG thumbnail, made on a thread and cached."""

from __future__ import annotations

import functools
import os

import cv2
from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from itmatch.features.images import UnreadableImage, load_image, reduction
from itmatch.features.thumbnail import shrink
from itmatch.serve.errors import ApiError
from itmatch.serve.schema import BAD_PARAMETER, answers
from itmatch.serve.service import Service


def router(service: Service) -> APIRouter:
    """The thumbnails of ``service``'s pictures, at the sizes its limits allow."""
    routes = APIRouter()
    index, limits = service.index, service.limits

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

    @routes.get("/images/{image}", summary="A picture of the index as a JPEG thumbnail", response_class=Response,
                responses={**answers(None, e404="no such picture, or it has no readable file",
                                     e422=f"{BAD_PARAMETER}, or size is not one of {limits.thumbnail_sizes}"),
                           200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"}})
    async def image_file(image: int = PathParam(..., ge=0, description="the picture's id in the index"),
                         size: int = Query(limits.thumbnail_sizes[0], description=f"longest side: one of "
                                                                                  f"{limits.thumbnail_sizes}",
                                           json_schema_extra={"enum": list(limits.thumbnail_sizes)})
                         ) -> Response:
        service.image_id(image)
        if size not in limits.thumbnail_sizes:
            raise ApiError(422, f"size: choose one of {', '.join(map(str, limits.thumbnail_sizes))}")
        try:
            data = await run_in_threadpool(thumbnail, image, size)
        except UnreadableImage:
            data = None
        if data is None:
            raise ApiError(404, f"image {image} has no readable picture file (features only, or the file moved)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return routes
