"""``table-{id}.json`` and ``table-{id}.md``: the published numbers of a table beside the measured ones, with the
difference (measured − published), and how each measured row was obtained."""

from __future__ import annotations

import json
from pathlib import Path

from itmatch.errors import ItmatchError
from itmatch.fileio import write_json, write_text
from itmatch.papers.plan import Plan, recipe_changes
from itmatch.papers.tables import measured_value
from itmatch.train.config import changed_keys

LABELS = {"i2t_r1": "i2t R@1", "i2t_r5": "i2t R@5", "i2t_r10": "i2t R@10", "t2i_r1": "t2i R@1",
          "t2i_r5": "t2i R@5", "t2i_r10": "t2i R@10", "rsum": "rsum", "sum": "sum"}


def table_doc(plan: Plan, results: list[dict | None]) -> dict:
    """The table as JSON: per row the published, measured and difference columns (None where absent), its
    status ("measured", "not run", "published only"), the keys in which its runs' recipes differ from the
    paper's, and what those recipes assume where the paper is silent. ``results`` holds each row's evaluation
    result, in row order."""
    table, paper = plan.table, plan.paper
    rows = []
    for row, result in zip(table.rows, results):
        measured = ({c: round(measured_value(c, result, table.columns), 2) for c in table.columns}
                    if result is not None else None)
        difference = ({c: None if row.published[c] is None else round(measured[c] - row.published[c], 2)
                       for c in table.columns} if measured is not None else None)
        changes = sorted({key for run_id in row.runs for key in _changes(plan, run_id)}) if measured else []
        runnable = bool(row.runs or row.checkpoint)
        status = "published only" if not runnable else ("measured" if measured else "not run")
        assumptions = [f"{run_id}: {paper.runs[run_id].assumption}" for run_id in row.runs
                       if paper.runs[run_id].assumption]
        rows.append({"method": row.method, "group": row.group, "dataset": row.dataset,
                     "protocol": plan.protocol or row.protocol, "runs": list(row.runs),
                     "checkpoint": row.checkpoint, "status": status, "published": row.published,
                     "measured": measured, "difference": difference, "recipe_changes": changes,
                     "assumptions": assumptions, "reading": _reading(plan, row.runs), "note": row.note})
    recipe = plan.recipe_label
    if not plan.changes_recipes and any(row["recipe_changes"] for row in rows):
        recipe = "CHANGED recipes in some runs (see the notes): not a reproduction"
    return {"paper": paper.name, "title": paper.title, "venue": paper.venue, "source": paper.source,
            "table": table.id, "caption": table.caption, "columns": list(table.columns), "recipe": recipe,
            "epochs_scale": plan.epochs_scale, "overrides": list(plan.overrides), "rows": rows}


def _reading(plan: Plan, run_ids: tuple[str, ...]) -> dict[str, object]:
    """The paper's reading switches (``Paper.readings``) as the row's runs of its ``reading_models`` are
    configured: {key: value}, or {key: [values]} when an ensemble's runs differ; {} for other models."""
    configs = [plan.runs[r].config for r in run_ids]
    args = [c.model.args for c in configs if c.model.name in plan.paper.reading_models]
    reading = {}
    for key, default in plan.paper.readings.items():
        values = list(dict.fromkeys(a.get(key, default) for a in args))
        if values:
            reading[key] = values[0] if len(values) == 1 else values
    return reading


def _changes(plan: Plan, run_id: str) -> list[str]:
    """How a run's recipe differs from the published one: as trained (its config.toml), or, its folder removed,
    as planned (which a run must match to be reported: ``Runner.check_inputs``)."""
    run = plan.runs[run_id]
    if run.files.config.is_file():
        return recipe_changes(run.directory, run.published)
    return changed_keys(run.published, run.config)


def table_markdown(doc: dict) -> str:
    """The table in Markdown: each cell "published / measured (difference)"."""
    lines = [f"# {doc['paper']} table {doc['table']}: {doc['caption']}", "",
             f"{doc['title']} ({doc['venue']}; {doc['source']}).", "",
             f"**Recipe: {doc['recipe']}.** Cells: published / measured (measured − published); – = not reported "
             "or not measured. Model selection on dev only; protocols: f30k = Flickr30K 1K test, coco1k = MS-COCO "
             "5K test in five 1K folds (mean), coco5k = all 5K at once.", ""]
    header = ["Method", "Data", "Protocol", *(LABELS[c] for c in doc["columns"]), "Runs"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for index, row in enumerate(doc["rows"], 1):
        name = f"{row['group']}: {row['method']}" if row["group"] else row["method"]
        cells = [_cell(row, c) for c in doc["columns"]]
        runs = (" + ".join(row["runs"]) if row["runs"] else
                f"checkpoint {row['checkpoint']}" if row["checkpoint"] else "published only")
        if row["status"] == "not run":
            runs += " (not run)"
        lines.append("| " + " | ".join([name, row["dataset"], row["protocol"], *cells, runs]) + " |")
        extra = [row["note"]] if row["note"] else []
        extra += [f"ASSUMPTION ({text})" for text in row["assumptions"]]
        if row["reading"] and row["measured"] is not None:
            extra.append("reading: " + ", ".join(f"{k}={v}" for k, v in row["reading"].items()))
        if row["recipe_changes"]:
            extra.append("trained with recipe changes in " + ", ".join(row["recipe_changes"]))
        if extra:
            notes.append(f"- row {index} ({row['method']}): " + "; ".join(extra))
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _cell(row: dict, column: str) -> str:
    published = row["published"][column]
    text = "–" if published is None else f"{published:.1f}"
    if row["measured"] is None:
        return f"{text} / –"
    diff = row["difference"][column]
    return f"{text} / {row['measured'][column]:.1f}" + ("" if diff is None else f" ({diff:+.1f})")


def table_paths(out: Path, table: str) -> tuple[Path, Path]:
    """``out/table-{table}.json`` and ``.md``: one pair per table, so that tables sharing a run directory (and its
    runs) keep their own reports."""
    return out / f"table-{table}.json", out / f"table-{table}.md"


def check_table_paths(out: Path, paper: str, table: str) -> None:
    """Raise unless the report files of ``paper``'s ``table`` in ``out`` are new or that table's earlier report
    (itmatch never overwrites a file it did not write); checked before any training."""
    js, md = table_paths(out, table)
    if not js.exists() and not md.exists():
        return
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if not (isinstance(doc, dict) and doc.get("paper") == paper and doc.get("table") == table):
        taken = js if js.exists() else md
        raise ItmatchError(f"{taken}: exists and is not itmatch's report of {paper} table {table}; move it away or "
                           "give another --out (itmatch never overwrites it)")


def write_table(out: Path, doc: dict) -> tuple[Path, Path]:
    """Write the table's report (``table_paths``, atomically, after ``check_table_paths``); returns the paths of
    the Markdown and JSON files."""
    check_table_paths(out, doc["paper"], doc["table"])
    js, md = table_paths(out, doc["table"])
    write_json(js, doc)
    write_text(md, table_markdown(doc))
    return md, js
