"""Models: the ``Matcher`` interface, the registry, and the built-in models (imported here, which registers them)."""

from itmatch.models import hrem, sgraf, tshsr, vse  # noqa: F401  (importing them registers the models)
from itmatch.models.base import Encoding, Matcher, TextEncoding
from itmatch.models.ensemble import Ensemble
from itmatch.models.registry import create_model, list_models, register_model

__all__ = ["Encoding", "Ensemble", "Matcher", "TextEncoding", "create_model", "list_models", "register_model"]
