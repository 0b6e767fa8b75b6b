"""Training checkpoints and random states, as plain dicts of tensors and Python values.

A checkpoint loads with ``torch.load(weights_only=True)`` and, for its model, with
``itmatch.checkpoint.load_checkpoint``: ``{format, format_version, model_name, model_args, state_dict, vocab,
optimizer, epoch, step, step_in_epoch, best_rsum, best_epoch, lr, config, epoch_stats, n_train_captions,
data_digest, rng}`` (``data_digest``: the train and dev splits' fingerprints, checked on resume).
``epoch``/``step_in_epoch`` say where training stands (``step_in_epoch`` batches of ``epoch`` are done) and
``rng`` holds every process's random states (torch, CUDA, numpy, Python), one entry per rank.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.checkpoint import FORMAT, FORMAT_VERSION
from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_path


def capture_rng() -> dict[str, Any]:
    """This process's random states in a ``weights_only``-loadable form (tensors, lists, numbers)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the random states of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a killed write leaves the previous file intact)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **content}, tmp)


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (no pickled code is run)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ItmatchError(f"{path}: not a readable training checkpoint ({exc}); start a new run with "
                           "another --out") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "optimizer" not in ckpt:
        raise ItmatchError(f"{path}: not an itmatch training checkpoint (no optimizer state to resume from)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ItmatchError(f"{path}: checkpoint format version {ckpt.get('format_version')}, this itmatch "
                           f"resumes version {FORMAT_VERSION}")
    return ckpt
