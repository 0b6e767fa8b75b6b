"""The extractor protocol and its registry: how pictures become R region features each.

An extractor turns picture files into :class:`Regions`; :func:`itmatch.features.extract_features` runs one over a
list of files and stores the result. Plug in another feature by registering a factory::

    from itmatch.features import Regions, register_extractor

    @register_extractor("my-features")
    def my_features(regions: int = 36) -> MyExtractor:
        return MyExtractor(regions)

and select it with ``itmatch extract --extractor my-features`` (after importing the module that registers it).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.fields import coerce, simple_kind


@dataclass(frozen=True)
class Regions:
    """The regions of one picture.

    ``features`` (R, D) float32; ``boxes`` (R, 4) float32 ``x1, y1, x2, y2`` normalised to [0, 1] by the picture's
    width and height; ``labels`` (R,) int32 detector class (-1: not a detection); ``scores`` (R,) float32 detector
    confidence (0: not a detection); ``width``/``height`` of the decoded picture in pixels.
    """

    features: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    width: int
    height: int


@runtime_checkable
class Extractor(Protocol):
    """Turns picture files into region features.

    ``name`` is the registry name; ``regions`` is R, the number of regions every picture gets; ``config()`` is a
    JSON-able dict that identifies the features exactly (name, R, model version, settings): outputs made with equal
    configs are interchangeable, which is what resuming and caching rely on. ``extract`` must be deterministic and
    must give every picture the same result whatever else is in the batch.
    """

    name: str
    regions: int

    def config(self) -> dict[str, Any]:
        """Identity of the features this extractor makes (JSON-able)."""
        ...

    def extract(self, paths: Sequence[Path]) -> list[Regions]:
        """One :class:`Regions` per path, in order; raise ``ItmatchError`` naming the file for a bad picture."""
        ...


ExtractorFactory = Callable[..., Extractor]

_REGISTRY: dict[str, ExtractorFactory] = {}


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Decorator registering ``factory(regions=..., **options) -> Extractor`` as ``name`` (duplicates: error)."""

    def decorate(factory: ExtractorFactory) -> ExtractorFactory:
        if name in _REGISTRY:
            raise ValueError(f"an extractor named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_extractors() -> list[str]:
    """Registered extractor names, sorted."""
    return sorted(_REGISTRY)


def get_extractor(name: str, **options: Any) -> Extractor:
    """Create the extractor registered as ``name`` with ``options`` (e.g. ``regions=36``); an option the factory
    does not take, or a value not of its annotated type, is an error naming it."""
    factory = _factory(name)
    parameters = inspect.signature(factory).parameters
    if not _takes_any_option(parameters):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise ItmatchError(f"extractor {name!r} has no option {unknown[0]!r}; its options are: "
                               f"{', '.join(parameters)}")
    hints = _hints(factory)
    return factory(**{key: coerce(value, hints[key], f"option {key}") if simple_kind(hints.get(key)) else value
                      for key, value in options.items()})


def _hints(factory: ExtractorFactory) -> dict[str, Any]:
    """The annotated types of ``factory``'s arguments (a class: of its ``__init__``); {} where they cannot be
    resolved (e.g. names imported only for type checkers): its options are then passed through unchecked."""
    try:
        return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 -- any failure to resolve means: no hints
        return {}


def extractor_from_config(config: dict[str, Any]) -> Extractor:
    """The extractor whose ``config()`` is ``config`` (stored with the features it made), built again with the
    same settings; the entries that are not settings (versions, the feature size) are left out. The settings are
    the factory's arguments, or, for a factory taking ``**options``, those of the extractor class it builds."""
    name = config["name"]
    settings = inspect.signature(_factory(name)).parameters
    if _takes_any_option(settings):
        made = get_extractor(name, regions=config["regions"])
        settings = inspect.signature(type(made)).parameters
        if not any(k in settings for k in config if k != "regions"):
            return made
    return get_extractor(name, **{k: v for k, v in config.items() if k in settings})


def _takes_any_option(parameters: Mapping[str, inspect.Parameter]) -> bool:
    """Whether a signature with ``parameters`` takes ``**options`` (so any option name)."""
    return any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _factory(name: str) -> ExtractorFactory:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ItmatchError(
            f"unknown extractor {name!r}; choose one of: {', '.join(list_extractors())}"
        ) from None


def check_regions(regions: Regions, expected: int, source: str) -> None:
    """Raise if ``regions`` does not hold ``expected`` consistent rows (guards third-party extractors)."""
    r = regions.features.shape[0]
    if (
        regions.features.ndim != 2
        or r != expected
        or regions.boxes.shape != (r, 4)
        or regions.labels.shape != (r,)
        or regions.scores.shape != (r,)
    ):
        raise ItmatchError(
            f"{source}: the extractor returned features {regions.features.shape}, boxes {regions.boxes.shape}, "
            f"labels {regions.labels.shape}, scores {regions.scores.shape}; expected ({expected}, D), ({expected}, 4), "
            f"({expected},), ({expected},)"
        )
