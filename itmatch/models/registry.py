"""Model registry, in timm's style: ``@register_model`` factories, ``create_model(name, **overrides)``.

A leaf module: the model files import ``register_model`` from here, and ``itmatch.models`` (the package, which
Python imports before any of its modules) imports the built-in model files, so the registry is full whenever it
can be reached and never imports a model file itself.
"""

from __future__ import annotations

from typing import Any, Callable

from itmatch.errors import ItmatchError
from itmatch.models.base import Matcher

_FACTORIES: dict[str, Callable[..., Matcher]] = {}
_CONFIGS: dict[str, Callable[..., Any]] = {}
_CLASSES: dict[str, type] = {}


def register_model(factory: Callable[..., Matcher]) -> Callable[..., Matcher]:
    """Register ``factory`` under its function name; registering a name twice is an error."""
    name = factory.__name__
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory


def register_preset(name: str, model: Callable[[Any], Matcher], config: Callable[..., Any], doc: str,
                    **fixed: Any) -> None:
    """Register ``name`` as ``model(config(**fixed, **overrides))``: a model class with some config fields fixed
    (SGR is ``SGRAF`` with ``module = "SGR"``); overriding a fixed field with another value is an error. Unlike a
    plain factory, its config can be had without building the model (``model_config``)."""

    def make_config(**overrides: Any) -> Any:
        for key, value in fixed.items():
            if overrides.setdefault(key, value) != value:
                raise ItmatchError(f"model {name!r} cannot take {key}={overrides[key]!r}")
        return config(**overrides)

    def factory(**overrides: Any) -> Matcher:
        return model(make_config(**overrides))

    factory.__name__, factory.__qualname__, factory.__doc__ = name, name, doc
    register_model(factory)
    _CONFIGS[name] = make_config
    _CLASSES[name] = model


def model_config(name: str, **overrides: Any) -> Any:
    """The config ``create_model(name, **overrides)`` would build the model from, without building it (no
    weights are made or read); a model registered with a plain factory is built and its ``config`` returned."""
    if name not in _CONFIGS:
        return create_model(name, **overrides).config
    try:
        return _CONFIGS[name](**overrides)
    except TypeError as exc:
        raise ItmatchError(f"model {name!r}: {exc}") from None


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_FACTORIES)


def embedding_models() -> list[str]:
    """Names of the registered presets whose models are embedding models (``Matcher.is_embedding``), sorted: what
    messages offer where one is needed. A plain factory's class is unknown until it is built, so it is left out."""
    return sorted(name for name, cls in _CLASSES.items() if getattr(cls, "is_embedding", False))


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

