"""Options several commands share (their types, help and defaults written once), and reading ``--option``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from itmatch.errors import ItmatchError
from itmatch.fields import parse_value
from itmatch.models.registry import embedding_models

#: The embedding models, for the help of options that need one.
EMBEDDERS = ", ".join(embedding_models())
#: ``itmatch.features.DEFAULT_EXTRACTOR``, spelled out: importing the features package here would import OpenCV
#: (an optional dependency) before any command runs (a test keeps the two equal).
DEFAULT_EXTRACTOR = "ssd-mobilenet-v2"

Extractor = Annotated[str, typer.Option(
    help=f"Registered extractor: {DEFAULT_EXTRACTOR} (D=1286) or precomputed (your own features).")]
Regions = Annotated[int, typer.Option(help="Regions per picture (R).", min=1)]
BatchSize = Annotated[int, typer.Option(help="Pictures per forward pass.", min=1)]
ExtractorOptions = Annotated[list[str] | None, typer.Option(
    "--option", help="Extractor setting KEY=VALUE (repeatable), e.g. min_score=0.3 or features_dir=DIR.")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
Device = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
#: The device of the commands that train (default "auto").
TrainDevice = Annotated[str, typer.Option(
    help="auto (a GPU when there is one), cpu, cuda or cuda:N; under torchrun each rank uses its own GPU.")]
TrustCheckpoint = Annotated[bool, typer.Option(
    help="Allow checkpoints holding arbitrary pickled objects (only for files you trust).")]
Features = Annotated[Path, typer.Option(
    help="An `itmatch extract` folder (features.npy, images.jsonl) or a dataset folder (with --split).")]
Split = Annotated[str | None, typer.Option(help="The split of a dataset folder: train, dev, test, testall.")]


def parse_options(pairs: list[str] | None, reserved: Iterable[str] = ("regions",)) -> dict[str, Any]:
    """``["min_score=0.3", "features_dir=feats"]`` -> ``{"min_score": 0.3, "features_dir": "feats"}`` (values read
    as ``--set`` reads them: ``itmatch.fields.parse_value``); a ``reserved`` key, which the command sets through an
    option of its own, is an error naming that option."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ItmatchError(f"--option {pair!r}: write it as KEY=VALUE, e.g. --option min_score=0.3")
        if key in reserved:
            raise ItmatchError(f"--option {key}: set by the command itself; use --{key.replace('_', '-')}")
        options[key] = parse_value(value.strip())
    return options
