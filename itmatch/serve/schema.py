"""The service's API as the OpenAPI schema documents it: the text query's constraints, and the answers as pydantic
models (the endpoints build plain JSON themselves; the fuzz tests check that it has these shapes)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

BAD_PARAMETER = "a parameter is missing or out of range"

#: What a query is stripped of: every character Python, JSON Schema (ECMAScript) or Rust calls white space.
BLANK = "".join(sorted({chr(c) for c in range(0x3001) if chr(c).isspace()} | {"\ufeff"}))


def query_schema(max_chars: int) -> dict[str, Any]:
    """The JSON schema of a text query: at most ``max_chars`` characters, at least one of them not blank."""
    return {"maxLength": max_chars, "pattern": f"[^{BLANK}]"}


class ErrorAnswer(BaseModel):
    """Every refused request's answer."""

    error: str


class Health(BaseModel):
    status: str
    images: int
    captions: int
    models: dict[str, Any]
    shortlist: int
    explain: bool
    picture_queries: bool


class Hit(BaseModel):
    """A picture in an answer: its id, scores, file name (never its folder) and thumbnail URL."""

    image: int
    score: float
    embedding_score: float
    name: Optional[str]
    thumbnail: str
    width: Optional[int] = None
    height: Optional[int] = None


class PictureHit(Hit):
    """A picture found for a text query (``caption``: one of its captions, where the index has captions)."""

    caption: Optional[str] = None


class TextAnswer(BaseModel):
    query: str
    candidates: int
    ms: float
    results: list[PictureHit]


class CaptionHit(Hit):
    """A caption found for a query picture, with the picture it describes."""

    caption_id: int
    caption: str


class PictureAnswer(BaseModel):
    candidates: int
    ms: float
    results: list[CaptionHit]


class ModelAttention(BaseModel):
    """One re-ranker's view: ``attention`` (words × regions); SAF's per-word ``gates`` and ``global_gate``."""

    model: str
    score: float
    attention: list[list[float]]
    gates: Optional[list[float]] = None
    global_gate: Optional[float] = None


class Explanation(BaseModel):
    image: int
    text: str
    words: list[str]
    known: list[bool]
    boxes: list[list[float]]
    models: list[ModelAttention]
    caption: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None


def answers(model: type[BaseModel] | None, **statuses: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of one endpoint: 200 with ``model`` (unless None), and its refusals
    ``e404="why"``, ..."""
    ok = {200: {"model": model, "description": "the answer"}} if model is not None else {}
    return {**ok, **{int(code[1:]): {"model": ErrorAnswer, "description": why} for code, why in statuses.items()}}
