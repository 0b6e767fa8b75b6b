"""Datasets from pictures: a user's manifest, the Tux Paint stamps, the Open Clip Art Library drawings.

Each source turns pictures and captions into :class:`~itmatch.data.sources.manifest.Item` lists; the dataset
module splits them, extracts region features (:mod:`itmatch.features`) and writes a precomp directory.
"""

from itmatch.data.sources.dataset import BuildResult, build_dataset, build_from_manifest, split_items
from itmatch.data.sources.manifest import Item, ManifestError, Problem, read_manifest
from itmatch.data.sources.tuxpaint import build_tuxpaint, find_stamps

__all__ = [
    "BuildResult",
    "Item",
    "ManifestError",
    "Problem",
    "build_dataset",
    "build_from_manifest",
    "build_tuxpaint",
    "find_stamps",
    "read_manifest",
    "split_items",
]
