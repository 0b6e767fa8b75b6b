"""Model registry, in timm's style: ``@register_model`` factories, ``create_model(name, **overrides)``."""

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
    _load_builtin()
    return sorted(_FACTORIES)


def create_model(name: str, **overrides) -> Matcher:
    """Build the registered model ``name`` with config fields overridden by keyword (unknown keys are errors)."""
    _load_builtin()
    if name not in _FACTORIES:
        raise ItmatchError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_FACTORIES))}")
    try:
        model = _FACTORIES[name](**overrides)
    except TypeError as exc:
        raise ItmatchError(f"model {name!r}: {exc}") from None
    model.model_name = name
    return model


def _load_builtin() -> None:
    # Importing the model modules runs their @register_model decorators.
    import itmatch.models.sgraf  # noqa: F401
    import itmatch.models.vse  # noqa: F401
    import itmatch.models.hrem  # noqa: F401
    import itmatch.models.tshsr  # noqa: F401
