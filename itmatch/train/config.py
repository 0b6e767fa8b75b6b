"""Training recipes: TOML files with a fixed schema, ``--set key=value`` overrides, strict checking.

A recipe has the sections ``[model]`` (``name`` and a ``[model.args]`` table of constructor overrides),
``[optim]``, ``[schedule]``, ``[loss]``, ``[data]`` and ``[run]``. Every key of the schema must be present and no
other key may be (a typo must not be silently ignored); ``model.args`` is free-form and checked by the model.
The resolved recipe is written back as TOML (``dumps``) into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from itmatch.errors import ItmatchError
from itmatch.fields import coerce, parse_value
from itmatch.scoring import PRECISIONS

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass
class ModelSection:
    """Which registered model to train (``itmatch models`` lists them) and its constructor overrides."""

    name: str
    args: dict


@dataclasses.dataclass
class OptimSection:
    """Optimizer: Adam (the SGRAF authors) or AdamW; ``grad_clip`` is the gradient-norm clip (0 = off)."""

    name: str
    lr: float
    weight_decay: float
    grad_clip: float


@dataclasses.dataclass
class ScheduleSection:
    """``epochs`` passes over all training captions; the lr is multiplied by ``lr_decay`` at each epoch listed
    in ``lr_decay_epochs`` (0-based: [30] means epochs 30, 31, ... run at lr * lr_decay)."""

    epochs: int
    lr_decay_epochs: list[int]
    lr_decay: float


@dataclasses.dataclass
class LossSection:
    """Bidirectional hinge: ``margin``; hardest negative only (else all negatives); treat other captions of a
    pair's image as non-negatives (the authors do not)."""

    margin: float
    hardest_negative: bool
    mask_same_image: bool


@dataclasses.dataclass
class DataSection:
    """``batch_size`` (image, caption) pairs per step, over all processes; ``dev_subset`` validates on the
    authors' first 1,000 dev images (5,000 captions); ``neighbour_clusters`` > 0 builds each batch from images
    of the same clusters of image features (HREM's neighbour batch sampling; 0 = random batches)."""

    batch_size: int
    dev_subset: bool
    neighbour_clusters: int


@dataclasses.dataclass
class RunSection:
    """``seed`` fixes the model init, the data order and dropout; ``precision`` fp32, tf32 or bf16 (autocast);
    ``checkpoint_every`` steps between saves of ``last.pt``; ``max_steps`` stops early (0 = run all epochs);
    ``recompute_activations`` keeps less in memory on a CPU for another forward pass (the same numbers)."""

    seed: int
    precision: str
    checkpoint_every: int
    max_steps: int
    recompute_activations: bool


@dataclasses.dataclass
class TrainConfig:
    """A complete training recipe."""

    model: ModelSection
    optim: OptimSection
    schedule: ScheduleSection
    loss: LossSection
    data: DataSection
    run: RunSection

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of ``epoch`` (0-based): ``lr * lr_decay ** (number of decay epochs <= epoch)``."""
        passed = sum(1 for e in self.schedule.lr_decay_epochs if e <= epoch)
        return self.optim.lr * self.schedule.lr_decay ** passed


#: Keys that may differ when a run is resumed: they do not change what a step computes.
RESUMABLE_CHANGES = ("schedule.epochs", "run.max_steps", "run.checkpoint_every", "run.recompute_activations")


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read the recipe ``path`` and apply ``--set`` style ``section.key=value`` overrides, checking everything."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ItmatchError(f"{path}: config file not found; the recipes are in configs/*.toml") from None
    except IsADirectoryError:
        raise ItmatchError(f"{path}: is a folder; give --config a recipe file (configs/*.toml)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ItmatchError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, str(path), overrides)


def config_from_dict(raw: dict[str, Any], source: str, overrides: Iterable[str] = ()) -> TrainConfig:
    """Build a checked ``TrainConfig`` from a nested dict (a parsed recipe) and overrides; errors name ``source``."""
    config = _build(TrainConfig, raw, source, "")
    for item in overrides:
        _apply_override(config, item)
    _check_values(config)
    return config


def dumps(config: TrainConfig) -> str:
    """The recipe as TOML text that ``load_config`` reads back to an equal config."""
    lines = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        values = dataclasses.asdict(getattr(config, section.name))
        for key, value in values.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in values.items():
            if isinstance(value, dict):
                lines.append(f"\n[{section.name}.{key}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        lines.append("")
    return "\n".join(lines)


def changed_keys(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (``model.args`` compared as one value)."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]


def fixed_settings(config: TrainConfig) -> dict:
    """``config`` as a dict without the ``RESUMABLE_CHANGES`` keys: what a run keeps however it is resumed."""
    settings = config.to_dict()
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        settings[section].pop(name, None)
    return settings


def unresumable_changes(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """The keys in which ``new`` differs from a run's ``saved`` config beyond ``RESUMABLE_CHANGES``: a run of
    other settings, which ``new`` may neither resume nor report."""
    return [key for key in changed_keys(saved, new) if key not in RESUMABLE_CHANGES]


def _build(cls: type, raw: Any, source: str, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``; missing, unknown and mistyped keys are errors."""
    label = where.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ItmatchError(f"{source}: [{label}] must be a table of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ItmatchError(f"{source}: unknown key(s) {', '.join(where + k for k in unknown)} in [{label}]; "
                           f"the keys are: {', '.join(names)}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ItmatchError(f"{source}: missing key(s) {', '.join(where + k for k in missing)}; every key of the "
                           "schema must be given (see configs/*.toml)")
    values = {}
    for name in names:
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, raw[name], source, f"{where}{name}.")
        else:
            values[name] = coerce(raw[name], kind, f"{source}: {where}{name}")
    return cls(**values)


def _apply_override(config: TrainConfig, item: str) -> None:
    """Apply one ``section.key=value`` (or ``model.args.name=value``); the value is read as TOML, else text."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ItmatchError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    value = parse_value(text.strip())
    parts = key.split(".")
    if parts[:2] == ["model", "args"] and len(parts) == 3:
        config.model.args[parts[2]] = value
        return
    sections = {f.name: f for f in dataclasses.fields(config)}
    section = getattr(config, parts[0], None) if parts[0] in sections else None
    fields = {f.name for f in dataclasses.fields(section)} if section is not None else set()
    if len(parts) != 2 or section is None or parts[1] not in fields or parts[1] == "args":
        known = ", ".join(f"{s}.{f.name}" for s in sections for f in dataclasses.fields(getattr(config, s))
                          if f.name != "args")
        raise ItmatchError(f"--set {key}: unknown config key; use model.args.NAME or one of: {known}")
    kind = typing.get_type_hints(type(section))[parts[1]]
    setattr(section, parts[1], coerce(value, kind, f"--set {key}"))


def _check_values(config: TrainConfig) -> None:
    """Range checks that the types cannot express; each error names the key and the allowed values."""
    checks = [
        ("optim.name", config.optim.name in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        ("optim.lr", config.optim.lr > 0 and math.isfinite(config.optim.lr), "a positive number"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, ">= 0"),
        ("optim.grad_clip", config.optim.grad_clip >= 0, ">= 0 (0 turns clipping off)"),
        ("schedule.epochs", config.schedule.epochs >= 1, ">= 1"),
        ("schedule.lr_decay_epochs", all(e >= 1 for e in config.schedule.lr_decay_epochs)
         and config.schedule.lr_decay_epochs == sorted(set(config.schedule.lr_decay_epochs)),
         "increasing epochs >= 1"),
        ("schedule.lr_decay", 0 < config.schedule.lr_decay <= 1, "in (0, 1]"),
        ("loss.margin", config.loss.margin >= 0, ">= 0"),
        ("data.neighbour_clusters", config.data.neighbour_clusters >= 0, ">= 0 (0 = random batches)"),
        ("data.batch_size", config.data.batch_size >= 2, ">= 2 (negatives come from the batch)"),
        ("run.seed", config.run.seed >= 0, ">= 0"),
        ("run.precision", config.run.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("run.checkpoint_every", config.run.checkpoint_every >= 1, ">= 1"),
        ("run.max_steps", config.run.max_steps >= 0, ">= 0 (0 = no limit)"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            raise ItmatchError(f"config {key} = {value!r}: must be {allowed}")
    if not config.model.name:
        raise ItmatchError("config model.name is empty; `itmatch models` lists the names")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                           ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ItmatchError(f"cannot write {value!r} into a TOML config; use numbers, booleans, strings or lists")
