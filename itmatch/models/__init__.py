"""Models: the ``Matcher`` interface, the registry, and the built-in models."""

from itmatch.models.base import Encoding, Matcher, TextEncoding
from itmatch.models.ensemble import Ensemble
from itmatch.models.registry import create_model, list_models, register_model

__all__ = ["Encoding", "Ensemble", "Matcher", "TextEncoding", "create_model", "list_models", "register_model"]
