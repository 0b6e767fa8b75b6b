"""Model registry, in timm's style: ``@register_model`` factories, ``create_model(name, **overrides)``.

A leaf module: the model files import ``register_model`` from here, and ``itmatch.models`` (the package, which
Python imports before any of its modules) imports the built-in model files, so the registry is full whenever it
can be reached and never imports a model file itself.
"""

from __future__ import annotations

from typing import Callable

from itmatch.errors import ItmatchError
from itmatch.models.base import Matcher

_FACTORIES: dict[str, Callable[..., Matcher]] = {}


def register_model(factory: Callable[..., Matcher]) -> Callable[..., Matcher]:
    """Register ``factory`` under its function name; registering a name twice is an error."""
    name = factory.__name__
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_FACTORIES)


def create_model(name: str, **overrides) -> Matcher:
    """Build the registered model ``name`` with config fields overridden by keyword (unknown keys are errors)."""
    if name not in _FACTORIES:
        raise ItmatchError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_FACTORIES))}")
    try:
        model = _FACTORIES[name](**overrides)
    except TypeError as exc:
        raise ItmatchError(f"model {name!r}: {exc}") from None
    model.model_name = name
    return model

