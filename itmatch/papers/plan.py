"""What reproducing a table takes: each run's resolved recipe (the paper's, or a labelled scaled one), its run
directory and state, the evaluations its rows need, and the estimated cost; ``describe`` is ``--dry-run``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from itmatch.errors import ItmatchError
from itmatch.models.registry import model_config
from itmatch.papers import cost
from itmatch.papers.tables import Paper, Table
from itmatch.train.config import TrainConfig, changed_keys, load_config, unresumable_changes
from itmatch.train.run_folder import RunFolder

RECIPES = Path(__file__).resolve().parents[2] / "configs"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """A run of the table: its recipe as trained (``config``) and as published (``published``)."""

    id: str
    dataset: str
    config: TrainConfig
    published: TrainConfig
    directory: Path
    protocols: tuple[str, ...]

    @property
    def files(self) -> RunFolder:
        """The run's files in ``directory`` (recipe, checkpoints, log)."""
        return RunFolder(self.directory)

    def state(self) -> str:
        """"finished", "started" (resumable), "new", or "other": its folder holds a run of other settings (another
        ``--set``, a changed recipe), which this plan must neither report nor train on."""
        return run_state(self.directory, self.config)

    def check_same_settings(self) -> None:
        """Raise :class:`ItmatchError` when the run's folder holds a run of other settings than planned, or one
        trained for more epochs than planned (another ``--epochs-scale``: its numbers are not this plan's)."""
        if self.state() == "other":
            differ = unresumable_changes(load_config(self.files.config), self.config)
            raise ItmatchError(f"{self.directory}: holds a run of other settings ({', '.join(differ)}); give "
                               "reproduce another --out, or move that run away")
        trained, planned = self.files.epochs_logged(), self.config.schedule.epochs
        if trained > planned:
            raise ItmatchError(f"{self.directory}: holds a run trained for {trained} epochs, more than the {planned} "
                               "this plan trains (another --epochs-scale?); give reproduce another --out, or move "
                               "that run away")

    def hours(self) -> float:
        """Estimated GPU-hours still to spend: training unless finished, and the test evaluations."""
        train = 0.0 if self.state() == "finished" else cost.train_hours(self.config, self.dataset)
        return train + sum(cost.eval_hours(self.config, p) for p in self.protocols)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The runs behind ``table``'s rows, trained under ``out/runs``; ``epochs_scale`` and ``overrides`` say how
    the recipes differ from the paper's (1.0 and none: the published recipes); ``checkpoints`` are the released
    model files given for the rows that evaluate one (name -> path)."""

    paper: Paper
    table: Table
    runs: dict[str, PlannedRun]
    out: Path
    epochs_scale: float
    overrides: tuple[str, ...]
    protocol: str | None
    checkpoints: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def changes_recipes(self) -> bool:
        """Whether runs are trained or evaluated otherwise than the paper did."""
        return self.epochs_scale != 1.0 or bool(self.overrides) or self.protocol is not None

    @property
    def recipe_label(self) -> str:
        """One line saying whose recipe the numbers come from."""
        parts = []
        if self.epochs_scale != 1.0:
            parts.append(f"epochs × {self.epochs_scale:g}")
        if self.overrides:
            parts.append("overrides " + ", ".join(self.overrides))
        if self.protocol:
            parts.append(f"protocol {self.protocol} on the test split instead of the paper's")
        if not self.changes_recipes:
            return "the paper's recipes (configs/*.toml) and protocols"
        return "SCALED / CHANGED recipe (" + "; ".join(parts) + "): a quick look, not a reproduction"


def recipe(name: str, overrides: tuple[str, ...] | list[str]) -> TrainConfig:
    """``configs/{name}.toml`` with ``overrides`` applied."""
    path = RECIPES / f"{name}.toml"
    if not path.is_file():
        raise ItmatchError(f"{path}: recipe not found; itmatch reproduce reads the recipes of a source checkout's "
                           "configs/ folder")
    return load_config(path, overrides)


def scaled(config: TrainConfig, scale: float) -> TrainConfig:
    """``config`` with its epochs, decay epochs and iteration-counted warm-ups multiplied by ``scale`` (at least
    one epoch; decays that would fall past the last epoch are dropped)."""
    if not 0 < scale < math.inf:
        raise ItmatchError(f"--epochs-scale must be a number > 0, got {scale}")
    if scale == 1.0:
        return config
    epochs = max(1, round(config.schedule.epochs * scale))
    decays = sorted({d for d in (max(1, round(e * scale)) for e in config.schedule.lr_decay_epochs) if d < epochs})
    # fields counted in iterations (a model config's ``iteration_fields``, e.g. HREM's instance-level warm-up),
    # whether the recipe sets them or leaves them at their defaults
    model = model_config(config.model.name, **config.model.args)
    counted = {name: round(getattr(model, name) * scale) for name in getattr(model, "iteration_fields", ())}
    args = {**config.model.args, **counted}
    return dataclasses.replace(
        config, schedule=dataclasses.replace(config.schedule, epochs=epochs, lr_decay_epochs=decays),
        model=dataclasses.replace(config.model, args=args))


def parse_checkpoints(items: list[str] | tuple[str, ...], table: Table) -> dict[str, Path]:
    """``--checkpoint NAME=PATH`` items as {name: path}; a name no row of ``table`` evaluates is an error."""
    known = table.checkpoint_names()
    found = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ItmatchError(f"--checkpoint {item!r}: write NAME=PATH, e.g. SAF=runs/f30k_SAF/model_best.pth.tar")
        if name not in known:
            what = "the released checkpoints " + ", ".join(known) if known else "no released checkpoint"
            raise ItmatchError(f"--checkpoint {name}: table {table.id} evaluates {what}")
        found[name] = Path(path)
    return found


def plan_table(paper: Paper, table: Table, out: str | Path, *, epochs_scale: float = 1.0,
               overrides: tuple[str, ...] = (), protocol: str | None = None,
               checkpoints: dict[str, Path] | None = None) -> Plan:
    """The plan of reproducing ``table`` into run directory ``out``."""
    out = Path(out)
    runs = {}
    for run_id in table.run_ids():
        spec = paper.runs[run_id]
        published = recipe(spec.recipe, spec.overrides)
        config = scaled(recipe(spec.recipe, [*spec.overrides, *overrides]), epochs_scale)
        protocols = tuple(dict.fromkeys(protocol or row.protocol for row in table.rows if run_id in row.runs))
        runs[run_id] = PlannedRun(run_id, spec.dataset, config, published, out / "runs" / run_id, protocols)
    return Plan(paper, table, runs, out, epochs_scale, tuple(overrides), protocol, dict(checkpoints or {}))


def checkpoint_label(plan: Plan, name: str) -> str:
    """How a row without runs is obtained: "published only", or the released checkpoint it evaluates."""
    if not name:
        return "published only"
    given = plan.checkpoints.get(name)
    return f"released checkpoint {name} ({given if given else f'give --checkpoint {name}=PATH'})"


def run_state(directory: Path, planned: TrainConfig | None = None) -> str:
    """"finished" (every epoch logged: those of ``planned``, else of its config.toml), "started", "new", or
    "other" when its config.toml differs from ``planned`` beyond what a resumed run may change (its epochs)."""
    run = RunFolder(directory)
    if not run.config.is_file():
        return "new"
    saved = load_config(run.config)
    if planned is not None and unresumable_changes(saved, planned):
        return "other"
    return "finished" if run.epochs_logged() >= (planned or saved).schedule.epochs else "started"


def recipe_changes(directory: Path, published: TrainConfig) -> list[str]:
    """Keys in which a run's saved config.toml differs from the published recipe (e.g. ``schedule.epochs``)."""
    return changed_keys(published, load_config(RunFolder(directory).config))


def describe(plan: Plan) -> str:
    """The ``--dry-run`` listing: the table's rows, the runs with their state and estimated cost, the total."""
    table, paper = plan.table, plan.paper
    lines = [f"{paper.name} table {table.id}: {table.caption}", f"recipe: {plan.recipe_label}",
             f"rows ({len(table.rows)}):"]
    for index, row in enumerate(table.rows, 1):
        how = " + ".join(row.runs) if row.runs else checkpoint_label(plan, row.checkpoint)
        group = f"[{row.group}] " if row.group else ""
        lines.append(f"  row {index}: {group}{row.method} | {row.dataset} {plan.protocol or row.protocol} | {how}")
    lines.append(f"runs ({len(plan.runs)}):")
    total = 0.0
    for run in plan.runs.values():
        spec = paper.runs[run.id]
        changes = " ".join(spec.overrides)
        hours = run.hours()
        total += hours
        lines.append(f"  {run.id}: {spec.recipe}{' ' + changes if changes else ''} | {run.config.schedule.epochs} "
                     f"epochs | {run.state()} | ~{hours:.1f} GPU-h")
        if spec.assumption:
            lines.append(f"    assumption: {spec.assumption}")
    datasets = sorted({run.dataset for run in plan.runs.values()})
    lines.append(f"total: ~{total:.1f} GPU-hours (estimates from FLOP counts at {cost.SUSTAINED_TFLOPS:g} "
                 "TFLOP/s sustained, see docs/reproducing.md; not measured)")
    if datasets:
        lines.append("data: " + ", ".join(f"DATA/{d}_precomp (train, dev, test{'all' if d == 'coco' else ''}) "
                                          "and its vocabulary" for d in datasets))
    return "\n".join(lines)

