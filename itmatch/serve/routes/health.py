"""``GET /health``: whether the service is up and what its index holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from itmatch.search.explain import explainable
from itmatch.serve.schema import Health, answers
from itmatch.serve.service import Service


def router(service: Service) -> APIRouter:
    """The status endpoint of ``service``."""
    routes = APIRouter()
    searcher, index = service.searcher, service.index

    @routes.get("/health", summary="Service status and what the index holds", responses=answers(Health))
    async def health() -> dict[str, Any]:
        return {"status": "ok", "images": index.n_images, "captions": index.n_captions,
                "models": searcher.model_names, "shortlist": service.shortlist,
                "explain": bool(explainable(searcher.rerankers)),
                "picture_queries": searcher.picture_query_problem() is None}

    return routes
