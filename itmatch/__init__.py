"""itmatch: image-text matching and cross-modal retrieval (SGR, SAF, SGRAF, TSHSR, HREM, VSE).

The public API: build or load a model, score images against captions, evaluate under the papers' protocols. Its
names load on first use, so that ``import itmatch`` (and the start of the ``itmatch`` command, which a Ctrl-C may
interrupt) does not wait for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from itmatch.checkpoint import load_checkpoint, load_model, save_model
    from itmatch.errors import ItmatchError
    from itmatch.models import Ensemble, Matcher, create_model, list_models
    from itmatch.scoring import score_matrix

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_HOMES = {"load_checkpoint": "itmatch.checkpoint", "load_model": "itmatch.checkpoint",
          "save_model": "itmatch.checkpoint", "ItmatchError": "itmatch.errors", "Ensemble": "itmatch.models",
          "Matcher": "itmatch.models", "create_model": "itmatch.models", "list_models": "itmatch.models",
          "score_matrix": "itmatch.scoring"}

__all__ = ["Ensemble", "ItmatchError", "Matcher", "create_model", "list_models", "load_checkpoint", "load_model",
           "save_model", "score_matrix", "__version__"]

#: Names this module uses itself, not part of the API.
_PRIVATE = {"annotations", "importlib", "TYPE_CHECKING", "Any"}


def __getattr__(name: str) -> Any:
    """A public name, or a submodule (``itmatch.models``), loaded on first use."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if not n.startswith("_") and n not in _PRIVATE)})
