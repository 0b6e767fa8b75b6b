"""Published tables: one TOML file per paper in this folder, read into checked dataclasses.

A file has ``[paper]`` (name, title, venue, source, and optionally ``readings``: model arguments with their
defaults that choose between readings of the paper, printed with every measured row of the ``reading_models``),
``[runs]`` (run id -> ``{recipe, dataset, set, assume}``: a
recipe of ``configs/`` with ``--set`` overrides, and what the recipe assumes where the paper is silent) and
``[[tables]]`` (id, caption, columns, rows). A row names its method, dataset (``f30k`` | ``coco``), protocol
(``f30k`` | ``coco1k`` | ``coco5k``), the ``published`` numbers in the order of ``columns`` (``nan`` = not
reported) and, where the row can be reproduced, either the ``runs`` behind it (several = an ensemble: the mean of
their score matrices) or the name of a released ``checkpoint`` it evaluates without training (``itmatch
reproduce --checkpoint NAME=PATH``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from itmatch.errors import ItmatchError

FOLDER = Path(__file__).parent
#: Result columns: recalls per direction (i2t = sentence retrieval, t2i = image retrieval), rsum, and ``sum`` =
#: the sum of the table's other recall columns (TSHSR's Table V).
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "sum")
DATASETS = {"f30k": "f30k_precomp", "coco": "coco_precomp"}
#: The split each protocol scores.
PROTOCOL_SPLITS = {"f30k": "test", "coco1k": "testall", "coco5k": "testall"}
PROTOCOL_DATASETS = {"f30k": "f30k", "coco1k": "coco", "coco5k": "coco"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A training run: ``configs/{recipe}.toml`` with ``overrides`` (``section.key=value``) on ``dataset``."""

    id: str
    recipe: str
    dataset: str
    overrides: tuple[str, ...] = ()
    assumption: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a published table; ``published`` maps each column to its number (None: not reported)."""

    method: str
    dataset: str
    protocol: str
    published: dict[str, float | None]
    runs: tuple[str, ...] = ()
    note: str = ""
    group: str = ""
    checkpoint: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    """A published table: ``columns`` (names of ``METRICS``) and its rows in the paper's order."""

    id: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]

    def run_ids(self) -> list[str]:
        """The runs its rows need, each once, in order of first use."""
        return list(dict.fromkeys(run for row in self.rows for run in row.runs))

    def checkpoint_names(self) -> list[str]:
        """The released checkpoints its rows evaluate, each once, in order of first use."""
        return list(dict.fromkeys(row.checkpoint for row in self.rows if row.checkpoint))


@dataclasses.dataclass(frozen=True)
class Paper:
    """A paper's tables and the runs that reproduce their rows."""

    name: str
    title: str
    venue: str
    source: str
    runs: dict[str, RunSpec]
    tables: tuple[Table, ...]
    readings: dict[str, object] = dataclasses.field(default_factory=dict)
    reading_models: tuple[str, ...] = ()

    def table(self, table_id: str) -> Table:
        """The table ``table_id`` (as printed: "3", "3a", ...)."""
        for table in self.tables:
            if table.id == str(table_id):
                return table
        raise ItmatchError(f"paper {self.name!r} has no table {table_id!r}; its tables are: "
                           f"{', '.join(t.id for t in self.tables)}")


def list_papers() -> list[str]:
    """Names of the papers whose tables are stored here."""
    return sorted(path.stem for path in FOLDER.glob("*.toml"))


def load_paper(name: str) -> Paper:
    """The checked tables of paper ``name`` (``list_papers()``)."""
    path = FOLDER / f"{name}.toml"
    if not path.is_file():
        raise ItmatchError(f"no published tables for paper {name!r}; choose one of: {', '.join(list_papers())}")
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    runs = {run_id: _run(run_id, spec, path) for run_id, spec in raw.get("runs", {}).items()}
    tables = tuple(_table(t, runs, path) for t in raw["tables"])
    info = raw["paper"]
    return Paper(info["name"], info["title"], info["venue"], info["source"], runs, tables,
                 dict(info.get("readings", {})), tuple(info.get("reading_models", ())))


def _run(run_id: str, spec: dict, path: Path) -> RunSpec:
    if spec.get("dataset") not in DATASETS:
        raise ItmatchError(f"{path}: run {run_id!r} needs dataset = one of {', '.join(DATASETS)}")
    return RunSpec(run_id, spec["recipe"], spec["dataset"], tuple(spec.get("set", ())), spec.get("assume", ""))


def _table(raw: dict, runs: dict[str, RunSpec], path: Path) -> Table:
    table_id, columns = str(raw["id"]), tuple(raw["columns"])
    where = f"{path}: table {table_id}"
    unknown = [c for c in columns if c not in METRICS]
    if unknown:
        raise ItmatchError(f"{where}: unknown column(s) {', '.join(unknown)}; columns are {', '.join(METRICS)}")
    rows = []
    for index, row in enumerate(raw["rows"], 1):
        label = f"{where} row {index} ({row.get('method')})"
        if len(row["published"]) != len(columns):
            raise ItmatchError(f"{label}: {len(row['published'])} numbers for {len(columns)} columns")
        if PROTOCOL_DATASETS.get(row["protocol"]) != row["dataset"]:
            raise ItmatchError(f"{label}: protocol {row['protocol']!r} does not score dataset {row['dataset']!r}")
        for run_id in row.get("runs", ()):
            if run_id not in runs or runs[run_id].dataset != row["dataset"]:
                raise ItmatchError(f"{label}: run {run_id!r} is not a {row['dataset']} run of [runs]")
        if row.get("runs") and row.get("checkpoint"):
            raise ItmatchError(f"{label}: a row is trained (runs) or evaluates a released checkpoint, not both")
        published = {c: (None if math.isnan(v) else float(v)) for c, v in zip(columns, row["published"])}
        rows.append(Row(row["method"], row["dataset"], row["protocol"], published, tuple(row.get("runs", ())),
                        row.get("note", ""), row.get("group", ""), row.get("checkpoint", "")))
    return Table(table_id, raw["caption"], columns, tuple(rows))


def measured_value(column: str, result: dict, columns: tuple[str, ...]) -> float:
    """Column ``column`` of an evaluation result (``itmatch.protocols.evaluate_blocks``'s JSON)."""
    if column == "rsum":
        return float(result["rsum"])
    if column == "sum":
        return sum(measured_value(c, result, columns) for c in columns if c not in ("rsum", "sum"))
    direction, recall = column.split("_")
    return float(result[direction][recall])
