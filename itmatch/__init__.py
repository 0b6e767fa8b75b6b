"""itmatch: image-text matching and cross-modal retrieval (SGR, SAF, SGRAF, TSHSR, HREM, VSE).

The public API: build or load a model, score images against captions, evaluate under the papers' protocols.
"""

from itmatch.checkpoint import load_checkpoint, load_model, save_model
from itmatch.errors import ItmatchError
from itmatch.models import Ensemble, Matcher, create_model, list_models
from itmatch.scoring import score_matrix

__version__ = "0.1.0"

__all__ = ["Ensemble", "ItmatchError", "Matcher", "create_model", "list_models", "load_checkpoint", "load_model",
           "save_model", "score_matrix", "__version__"]
