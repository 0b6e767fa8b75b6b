"""Extraction under ``torchrun``: the pictures shared out across processes, one resumable shard folder each,
merged by rank 0 into the ordinary features folder.

Every process lists the same pictures (the same folder or manifest). Process r of W takes the r-th of W
consecutive near-equal shares and extracts it into ``OUT/.shards/r-of-W/`` -- a features folder of its own, so
it resumes after a kill exactly like a one-process run (and reuses rows already in ``OUT``, or in the shares of
an earlier run with another number of processes; a one-process run over ``OUT`` reuses them too). When every
shard is done, rank 0 copies the rows into ``OUT`` (``merge_folders``: also resumable) and removes ``.shards``.
Extractors give every picture the same result whatever else is in the batch, so the arrays equal a one-process
run's bit for bit. All processes must see ``OUT``: the same machine, or a shared file system across nodes.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.features.base import Extractor
from itmatch.features.store import PARTIAL, SHARDS, FeatureSet, shard_folders
from itmatch.features.writer import extract_here, finished_result, merge_folders
#: How long a process that finished its share waits for the others (extraction can take days).
WAIT = datetime.timedelta(days=7)


def shard_folder(out: Path, rank: int, world_size: int) -> Path:
    """Where process ``rank`` of ``world_size`` keeps its share."""
    return out / SHARDS / f"{rank}-of-{world_size}"


def extract_sharded(extractor: Extractor, paths: list[Path], keys: list[dict[str, Any]], out: Path,
                    batch_size: int, progress: bool, skip_unreadable: bool, started: float) -> FeatureSet:
    """``extract_features`` as one of the ``torchrun`` processes (see the module docstring); every process
    returns the merged folder, with ``computed`` the pictures all processes ran through the extractor."""
    from itmatch.distributed import setup  # torch.distributed: only under torchrun

    info = setup("cpu", timeout=WAIT)  # gloo: the processes only wait for each other
    try:
        shares = np.array_split(np.arange(len(paths)), info.world_size)
        mine = shares[info.rank]
        folder = shard_folder(out, info.rank, info.world_size)
        earlier = shard_folders(out, other_than=info.world_size)  # this run's own shares are being written
        computed = 0
        if len(mine):
            done = extract_here(extractor, [paths[i] for i in mine], [keys[i] for i in mine], folder, batch_size,
                                progress and info.is_main, skip_unreadable, started,
                                reuse=[out, out / PARTIAL, *earlier])
            computed = done.computed
        total = sum(info.all_gather_object(computed))  # also: every shard is finished
        if info.is_main:
            folders = [shard_folder(out, r, info.world_size) for r, share in enumerate(shares) if len(share)]
            merge_folders(out, extractor.config(), keys, extractor.regions, folders)
            shutil.rmtree(out / SHARDS)
        info.barrier()
    finally:
        info.close()
    return finished_result(out, total, started)
