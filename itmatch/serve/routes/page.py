"""The web page (``static/index.html``; its scripts and styles are mounted under ``/static``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).parents[1] / "static"


def router() -> APIRouter:
    """``GET /``: the search page (not part of the API schema)."""
    routes = APIRouter()

    @routes.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return routes
