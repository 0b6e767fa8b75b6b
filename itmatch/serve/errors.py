"""The service's refusals: ``ApiError`` and the handlers that answer every refused request with its 4xx status and
``{"error": "what is wrong and what to do"}``, as the OpenAPI schema documents."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from itmatch.features.images import UnreadableImage


class ApiError(Exception):
    """A refused request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def as_api_error(exc: Exception) -> ApiError:
    """A model call's refusal as an answer: 415 for an undecodable picture, 422 for any other bad input."""
    return ApiError(415 if isinstance(exc, UnreadableImage) else 422, str(exc))


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, FastAPI's parameter validation and Starlette's HTTP errors (404, 405...) as JSON."""

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
