"""``GET /explain``: what each word of a text looks at in a picture (the models' attention data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from itmatch.serve.schema import BAD_PARAMETER, Explanation, answers, query_schema
from itmatch.serve.service import Service


def router(service: Service) -> APIRouter:
    """The explanation endpoint of ``service``."""
    routes = APIRouter()
    searcher, limits = service.searcher, service.limits

    @routes.get("/explain", summary="What each word of q looks at in a picture (attention data)",
                responses=answers(Explanation, e404="no such picture",
                                  e422=f"{BAD_PARAMETER}, the text is empty, too long or has no known word, or no "
                                       "model of the index can explain"))
    async def explain(image: int = Query(..., ge=0, description="the picture's id"),
                      q: str = Query(..., description="the text",
                                     json_schema_extra=query_schema(limits.max_query_chars))) -> dict[str, Any]:
        text = service.query_text(q)
        data = await service.on_model_thread(searcher.explain, service.image_id(image), text)
        data.pop("path", None)
        return data

    return routes
