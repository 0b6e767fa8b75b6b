"""Region features for a user's own pictures: pluggable extractors and a resumable, memory-mapped store.

>>> from itmatch.features import extract_features
>>> feats = extract_features(sorted(Path("photos").glob("*.jpg")), "photos-features")   # doctest: +SKIP
>>> feats.features.shape                                                                 # doctest: +SKIP
(120, 36, 1286)

Built-in extractors: ``ssd-mobilenet-v2`` (default, D = 1286, see :mod:`itmatch.features.ssd`) and
``precomputed`` (a user's per-picture Bottom-Up-Attention files, see :mod:`itmatch.features.precomputed`).
"""

from itmatch.features import precomputed, ssd  # noqa: F401  (register the built-in extractors)
from itmatch.features.base import (
    Extractor,
    Regions,
    extractor_from_config,
    get_extractor,
    list_extractors,
    register_extractor,
)
from itmatch.features.images import UnreadableImage, find_images, load_image
from itmatch.features.extract import extract_features
from itmatch.features.store import FeatureSet, open_features

DEFAULT_EXTRACTOR = ssd.NAME

__all__ = [
    "DEFAULT_EXTRACTOR",
    "Extractor",
    "FeatureSet",
    "Regions",
    "UnreadableImage",
    "extract_features",
    "extractor_from_config",
    "find_images",
    "get_extractor",
    "list_extractors",
    "load_image",
    "open_features",
    "register_extractor",
]
