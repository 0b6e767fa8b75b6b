"""The SGRAF authors' model files (``model_best.pth.tar``, Paranioar/SGRAF): what model a release holds, read
from its weights, and an SGR/SAF model written back in that layout so the authors' scripts load it.

A release is ``{"epoch", "model": [image encoder, text encoder, similarity encoder] state dicts, "best_rsum",
"opt": argparse.Namespace, "Eiters"}``. Every size is read from a weight's shape, since the authors' own
``evaluation.py`` builds its model from ``opt`` and would fail on a file whose ``opt`` disagreed with its weights:
itmatch refuses such a file instead of guessing. ``opt`` is read only for what no shape shows (the
normalisation flags, and ``lambda_softmax``, which the release does not have: its attention hard-codes 9).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_path
from itmatch.models.base import Matcher

PARTS = ("img_enc", "txt_enc", "sim_enc")
#: What the release's model code fixes rather than reads from ``opt`` (``model.py``: ``SCAN_attention(...,
#: smooth=9.0)``, ``VisualSA(embed_size, 0.4, 36)``): a model must have these values to be written as a release.
RELEASE_FIXED = {"lambda_softmax": 9.0, "num_regions": 36, "global_node": True, "attention": "t2i",
                 "similarity": "vector"}
#: The release's ``opts.py`` defaults, the ``opt`` of an exported file before the model's own values go in.
RELEASE_OPT = dict(data_path="data", data_name="f30k_precomp", vocab_path="./vocab/", model_name="./runs/checkpoint",
                   logger_name="./runs/log", batch_size=128, num_epochs=40, lr_update=30, learning_rate=0.0002,
                   workers=10, log_step=10, val_step=1000, grad_clip=2.0, margin=0.2, max_violation=True,
                   img_dim=2048, word_dim=300, embed_size=1024, sim_dim=256, num_layers=1, bi_gru=True,
                   no_imgnorm=False, no_txtnorm=False, module_name="SGR", sgr_step=3)
#: Vocabulary sizes of the authors' two vocabularies: an exported file's ``data_name`` when none is given.
RELEASE_VOCABS = {8481: "f30k_precomp", 11353: "coco_precomp"}


def _weight(part: dict, name: str, where: str) -> torch.Tensor:
    if name not in part:
        raise ItmatchError(f"missing weight '{where}.{name}' in the release")
    return part[name]


def release_sizes(parts: list[dict]) -> dict[str, Any]:
    """Every size of a release's model from its weight shapes: module, embed_size, img_dim, vocab_size,
    word_dim, num_layers, bi_gru, sim_dim, num_regions and sgr_step (SGR)."""
    image, text, sim = parts
    fc = _weight(image, "fc.weight", "img_enc")
    embed = _weight(text, "embed.weight", "txt_enc")
    layers = {int(m.group(1)) for k in text if (m := re.fullmatch(r"cap_rnn\.weight_ih_l(\d+)", k))}
    hidden = _weight(text, "cap_rnn.weight_hh_l0", "txt_enc").shape[1]
    if hidden != fc.shape[0]:
        raise ItmatchError(f"txt_enc.cap_rnn has hidden size {hidden} but img_enc.fc gives embed_size "
                           f"{fc.shape[0]}; the release builds both with embed_size")
    steps = {int(m.group(1)) for k in sim if (m := re.match(r"SGR_module\.(\d+)\.", k))}
    has_saf = any(k.startswith("SAF_module.") for k in sim)
    if has_saf == bool(steps):
        raise ItmatchError(f"the similarity encoder holds {'both' if has_saf else 'neither of'} SGR_module.* and "
                           "SAF_module.* weights; a release is SGR or SAF")
    sizes = dict(module="SAF" if has_saf else "SGR", embed_size=int(fc.shape[0]), img_dim=int(fc.shape[1]),
                 vocab_size=int(embed.shape[0]), word_dim=int(embed.shape[1]), num_layers=len(layers),
                 bi_gru="cap_rnn.weight_ih_l0_reverse" in text,
                 sim_dim=int(_weight(sim, "sim_tranloc_w.weight", "sim_enc").shape[0]),
                 num_regions=int(_weight(sim, "v_global_w.embedding_local.1.weight", "sim_enc").shape[0]))
    if not has_saf:
        sizes["sgr_step"] = len(steps)
    return sizes


def release_config(opt: Any, parts: list[dict]) -> dict[str, Any]:
    """SGRAF constructor arguments of a release (``module`` included): sizes from the weights, cross-checked
    with ``opt`` (a disagreement is an error naming both values; not ``vocab_size``, which the authors'
    evaluation replaces by their vocabulary's length); from ``opt`` only the normalisation flags and
    ``lambda_softmax`` (default 9, the release's fixed temperature)."""
    def get(key: str, default: Any = None) -> Any:
        return opt.get(key, default) if isinstance(opt, dict) else getattr(opt, key, default)

    sizes = release_sizes(parts)
    names = {"module": "module_name"}
    checked = {k: v for k, v in sizes.items() if k != "vocab_size"}  # evaluation.py resets it from the vocabulary
    wrong = [f"opt.{names.get(k, k)} is {get(names.get(k, k))!r} but the weights say {v!r}"
             for k, v in checked.items() if get(names.get(k, k)) is not None and get(names.get(k, k)) != v]
    if wrong:
        raise ItmatchError("opt disagrees with the weights (" + "; ".join(wrong) + "); the authors' scripts "
                           "could not load this file either")
    return dict(sizes, lambda_softmax=float(get("lambda_softmax", RELEASE_FIXED["lambda_softmax"])),
                img_norm=not get("no_imgnorm", False), txt_norm=not get("no_txtnorm", False))


def check_exportable(model: Matcher) -> None:
    """Refuse a model the authors' code cannot rebuild: not SGR/SAF, or an ablation switch or value that their
    model code fixes (``RELEASE_FIXED``)."""
    config = getattr(model, "config", None)
    if getattr(config, "module", None) not in ("SGR", "SAF") or model.model_name not in ("sgr", "saf"):
        raise ItmatchError(f"only SGR and SAF models can be written in the authors' layout, not "
                           f"{model.display_name!r}")
    wrong = [f"{k}={getattr(config, k)!r}" for k, v in RELEASE_FIXED.items() if getattr(config, k) != v]
    if config.module == "SGR" and config.sgr_step == 0:  # itmatch then builds no local nodes (sim_tranloc_w)
        wrong.append("sgr_step=0")
    if wrong:
        raise ItmatchError(f"the authors' code fixes {', '.join(f'{k}={v!r}' for k, v in RELEASE_FIXED.items())}; "
                           f"this model has {', '.join(wrong)}, which their scripts would score differently")


def release_opt(model: Matcher, data_name: str | None = None, training: dict | None = None) -> argparse.Namespace:
    """The ``opt`` of an exported file: the release's defaults, the model's sizes, its training recipe where
    known (``training``: an itmatch run's config dict) and ``data_name`` (default: from the vocabulary size)."""
    cfg = model.config
    opt = dict(RELEASE_OPT, img_dim=cfg.img_dim, word_dim=cfg.word_dim, embed_size=cfg.embed_size,
               sim_dim=cfg.sim_dim, num_layers=cfg.num_layers, bi_gru=cfg.bi_gru, no_imgnorm=not cfg.img_norm,
               no_txtnorm=not cfg.txt_norm, module_name=cfg.module, sgr_step=cfg.sgr_step,
               vocab_size=cfg.vocab_size, data_name=data_name or RELEASE_VOCABS.get(cfg.vocab_size, "f30k_precomp"))
    if training:
        optim, schedule, loss = training["optim"], training["schedule"], training["loss"]
        opt.update(learning_rate=optim["lr"], grad_clip=optim["grad_clip"], num_epochs=schedule["epochs"],
                   lr_update=(schedule["lr_decay_epochs"] or [schedule["epochs"]])[0],
                   batch_size=training["data"]["batch_size"], margin=loss["margin"],
                   max_violation=loss["hardest_negative"])
    return argparse.Namespace(**opt)


def release_checkpoint(model: Matcher, *, epoch: int = 0, best_rsum: float = 0.0, eiters: int = 0,
                       data_name: str | None = None, training: dict | None = None) -> dict:
    """``model`` as the dict the authors' ``train.py`` saves (three part state dicts under their names)."""
    check_exportable(model)
    parts: list[dict] = [{} for _ in PARTS]
    for key, value in model.state_dict().items():
        prefix, _, name = key.partition(".")
        parts[PARTS.index(prefix)][name] = value.detach().cpu().clone()
    return {"epoch": int(epoch), "model": parts, "best_rsum": float(best_rsum),
            "opt": release_opt(model, data_name, training), "Eiters": int(eiters)}


def save_release(path: str | os.PathLike, model: Matcher, **info: Any) -> None:
    """Write ``model`` as an authors' ``.pth.tar`` (``release_checkpoint``'s keywords), atomically."""
    content = release_checkpoint(model, **info)
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
