"""The entry point of extraction: check the pictures, then extract them in this process
(:func:`itmatch.features.writer.extract_here`) or, under ``torchrun``, in shares across the processes
(:mod:`itmatch.features.sharded`), into the features directory of :mod:`itmatch.features.store`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itmatch.distributed import launch_rank
from itmatch.errors import ItmatchError
from itmatch.features import ssd
from itmatch.features.base import Extractor, get_extractor
from itmatch.features.sharded import extract_sharded
from itmatch.features.store import FOLDER, WRITTEN, FeatureSet, image_key, is_finished, open_features
from itmatch.features.writer import extract_here
from itmatch.fileio import check_folder, folder_lock, mark_folder, remove_stale


def extract_features(
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    extractor: str | Extractor = ssd.NAME,
    regions: int = 36,
    batch_size: int = 8,
    progress: bool = True,
    skip_unreadable: bool = False,
    folder_option: str | None = "--out",
    **options: Any,
) -> FeatureSet:
    """Extract R region features for every picture in ``images`` into ``out_dir`` and open the result.

    ``out_dir`` must be new, empty, or a features folder itmatch wrote that holds nothing else.

    ``extractor`` is a registered name (created with ``regions`` and ``options``) or an :class:`Extractor`.
    Resumable and incremental: finished pictures are never extracted again (see the module docstring). Row i of
    every array belongs to ``images[i]``. With ``skip_unreadable`` a picture that cannot be decoded gets zero rows
    and an ``error`` in ``images.jsonl`` instead of stopping the run (see :attr:`FeatureSet.ok`).
    ``folder_option``: the command's option that named ``out_dir``, for messages (None: a cache folder).
    """
    started = time.perf_counter()
    if isinstance(extractor, str):
        extractor = get_extractor(extractor, regions=regions, **options)
    paths = [Path(p) for p in images]
    if not paths:
        raise ItmatchError(f"{out_dir}: no pictures to extract; give a folder or manifest that lists some")
    keys = [image_key(p) for p in paths]
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key["path"] in seen:
            raise ItmatchError(f"{paths[i]}: listed twice (items {seen[key['path']] + 1} and {i + 1}); list it once")
        seen[key["path"]] = i
    config = extractor.config()
    out = Path(out_dir)
    check_folder(out, FOLDER, folder_option or "--features")
    out.mkdir(parents=True, exist_ok=True)
    # One extraction writes a folder at a time (a second one would remove the first's unfinished work under it);
    # under torchrun the job's processes share it, and its first process holds the lock for them all.
    with folder_lock(out, folder_option) if not launch_rank() else contextlib.nullcontext():
        remove_stale(out)
        mark_folder(out, FOLDER, claim=WRITTEN)
        if is_finished(out, config, keys):
            return open_features(out)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return extract_sharded(extractor, paths, keys, out, batch_size, progress, skip_unreadable, started)
        return extract_here(extractor, paths, keys, out, batch_size, progress, skip_unreadable, started)
