"""Model files: the native format (safetensors + JSON config, no pickle), itmatch training checkpoints
(plain dicts, ``weights_only`` loadable), and the SGRAF authors' released ``.pth.tar`` files (``itmatch.release``).

An official file's ``opt`` is an ``argparse.Namespace``, which is allow-listed for
``torch.load(weights_only=True)``; a file holding any other Python object is refused unless the user says they
trust it (unpickling can run code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_path
from itmatch.models.base import Matcher
from itmatch.models.registry import create_model
from itmatch.release import PARTS as RELEASE_PARTS
from itmatch.release import release_config

FORMAT = "itmatch"
FORMAT_VERSION = 1


@dataclasses.dataclass
class LoadedModel:
    """A model read from a file, with the vocabulary stored beside it (if any) and where it came from."""

    model: Matcher
    vocab: dict | None
    source: str  # "native", "training" or "official"
    info: dict = dataclasses.field(default_factory=dict)  # epoch, step, best_rsum, config where the file has them


def save_model(path: str | os.PathLike, model: Matcher, vocab: dict | None = None) -> None:
    """Write ``model`` (and optionally its vocabulary JSON dict) as one ``.safetensors`` file, atomically."""
    if not model.model_name:
        raise ItmatchError("only registered models can be saved; build the model with create_model(...)")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "model_name": model.model_name,
            "model_args": json.dumps(model.model_args())}
    if vocab is not None:
        meta["vocab"] = json.dumps(vocab)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, device: str | torch.device = "cpu"
                    ) -> LoadedModel:
    """Read any supported model file (native, training checkpoint, or the authors' release) in eval mode."""
    path = Path(path)
    if path.is_dir():
        raise ItmatchError(f"{path}: is a folder (a training run?); give a model file in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise ItmatchError(f"{path}: no such checkpoint file")
    if _is_safetensors(path):
        loaded = _load_native(path)
    else:
        loaded = _load_torch(path, trust)
    loaded.model.to(device).eval()
    return loaded


def load_model(path: str | os.PathLike, *, trust: bool = False, device: str | torch.device = "cpu") -> Matcher:
    """The model in ``path`` (any supported format), ready for scoring."""
    return load_checkpoint(path, trust=trust, device=device).model


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_native(path: Path) -> LoadedModel:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ItmatchError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ItmatchError(f"{path}: a safetensors file without itmatch metadata; convert it with `itmatch convert`")
    model = create_model(meta["model_name"], **json.loads(meta["model_args"]))
    _load_state(model, state, path)
    return LoadedModel(model, json.loads(meta["vocab"]) if "vocab" in meta else None, "native")


# How torch.load(weights_only=True) names the object it refused (the wording differs for blocked modules).
_BLOCKED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _load_torch(path: Path, trust: bool) -> LoadedModel:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = _BLOCKED.search(str(exc))
        if blocked is None:
            raise ItmatchError(f"{path}: not a checkpoint (neither .safetensors nor a PyTorch file)") from None
        if not trust:
            raise ItmatchError(f"{path}: holds the Python object {blocked[1]}, beyond tensors and options; if you "
                               "trust its source, pass --trust-checkpoint (unpickling can run code)") from None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # torch.load fails in many ways on a file that is not a checkpoint
        raise ItmatchError(f"{path}: not a checkpoint (neither .safetensors nor a PyTorch file)") from None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        model = create_model(ckpt["model_name"], **ckpt["model_args"])
        _load_state(model, ckpt["state_dict"], path)
        info = {k: ckpt[k] for k in ("epoch", "step", "best_rsum", "config") if ckpt.get(k) is not None}
        return LoadedModel(model, ckpt.get("vocab"), "training", info)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), (list, tuple)) and "opt" in ckpt:
        info = {k: v for k, v in (("epoch", ckpt.get("epoch")), ("step", ckpt.get("Eiters")),
                                  ("best_rsum", ckpt.get("best_rsum"))) if v is not None}
        return LoadedModel(_official_model(ckpt, path), None, "official", info)
    raise ItmatchError(f"{path}: a PyTorch file, but neither an itmatch checkpoint nor an SGRAF release")


def _official_model(ckpt: dict, path: Path) -> Matcher:
    parts = ckpt["model"]
    if len(parts) != 3 or not all(isinstance(p, dict) for p in parts):
        raise ItmatchError(f"{path}: 'model' must hold three state dicts (image, text, similarity encoders)")
    try:
        args = release_config(ckpt["opt"], parts)
    except ItmatchError as exc:
        raise ItmatchError(f"{path}: {exc}") from None
    model = create_model(args.pop("module").lower(), **args)
    state = {f"{prefix}.{k}": v for prefix, part in zip(RELEASE_PARTS, parts) for k, v in part.items()}
    _load_state(model, state, path)
    return model


def _load_state(model: Matcher, state: dict, path: Path) -> None:
    """Load ``state`` strictly; only BatchNorm step counters (absent from old files) may be missing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ItmatchError(f"{path}: weights do not fit {model.model_name}: missing {missing or 'none'}, "
                           f"unexpected {unexpected or 'none'}")
    wrong = [f"{k} {tuple(v.shape)}≠{tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ItmatchError(f"{path}: weight shapes do not fit {model.model_name}: {', '.join(wrong)}")
    model.load_state_dict(state, strict=False)
