"""`itmatch reproduce`: train and evaluate every row of a published table and write it beside the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from itmatch.cli.options import Progress, TrainDevice, TrustCheckpoint
from itmatch.errors import ItmatchError


def reproduce(
    paper: Annotated[str, typer.Option(help="sgraf, tshsr, hrem or sgraf_reproduction (seed 000).")],
    table: Annotated[Optional[str], typer.Option(help="Table id as printed (1, 3, 3a, ...); omit to list them.")]
    = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Folder holding f30k_precomp/ and/or coco_precomp/ (the SCAN release's data/).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory: runs/ (one training run each), results/, table-ID.md, table-ID.json.")] = None,
    vocab: Annotated[Optional[Path], typer.Option(
        help="Folder with f30k_precomp_vocab.json / coco_precomp_vocab.json (default: --data; else each "
             "dataset folder's vocab.json).")] = None,
    device: TrainDevice = "auto",
    epochs_scale: Annotated[float, typer.Option(
        help="Multiply every run's epochs (and decay epochs, warm-ups) by this: a labelled quick look.")] = 1.0,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a value of every run's recipe, SECTION.KEY=VALUE (labelled in the table).")] = None,
    whole_split: Annotated[bool, typer.Option(
        "--whole-split", help="Score the whole test split instead of the paper's protocol (data that is not "
                              "Flickr30K / MS-COCO, e.g. synthetic; labelled in the table).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the rows and runs with their estimated cost; train nothing.")] = False,
    rows_from: Annotated[Optional[Path], typer.Option(
        help="Rebuild the table from the finished runs of this run directory; train nothing.")] = None,
    checkpoints: Annotated[Optional[list[str]], typer.Option(
        "--checkpoint", help="NAME=PATH: the released model a row evaluates without training (e.g. the "
                             "\"Pre\" rows of sgraf_reproduction: SGR=..., SAF=...); repeat for several.")] = None,
    trust_checkpoint: TrustCheckpoint = False,
    progress: Progress = True,
) -> None:
    """Reproduce a paper's table: train each row's variant with the paper's recipe, evaluate it with the paper's
    protocol, and write OUT/table-ID.md and OUT/table-ID.json with the measured numbers beside the published ones.
    Runs resume where they stopped; finished rows are not recomputed.

    Examples:

      itmatch reproduce --paper sgraf --table 3 --dry-run

      itmatch reproduce --paper sgraf --table 3 --data data --vocab vocab --out runs/sgraf-t3 --device cuda

      itmatch reproduce --paper sgraf --table 4 --data data --out runs/quick --epochs-scale 0.1

      itmatch reproduce --paper sgraf --table 5 --rows-from runs/sgraf-t3 --out runs/sgraf-t5

      itmatch reproduce --paper sgraf_reproduction --table 1 --data data --vocab vocab --out runs/seed000
        --checkpoint SGR=f30k/SGR/model_best.pth.tar --checkpoint SAF=f30k/SAF/model_best.pth.tar
    """
    from itmatch.papers import load_paper
    from itmatch.papers.plan import describe, parse_checkpoints, plan_table
    from itmatch.papers.report import check_table_paths, table_doc, write_table
    from itmatch.papers.runner import Runner

    document = load_paper(paper)
    if table is None:
        for item in document.tables:
            typer.echo(f"table {item.id}: {item.caption} ({len(item.rows)} rows)")
        return
    if rows_from is not None and (rows_from.is_file() or not (rows_from.exists() or checkpoints)):
        raise ItmatchError(f"--rows-from {rows_from}: no such run folder; give the --out of an earlier "
                           "`itmatch reproduce`")
    target = out or rows_from
    if target is None and not dry_run:
        raise ItmatchError("give --out RUN_DIR (where the runs and the table go), or --dry-run")
    chosen = document.table(table)
    plan = plan_table(document, chosen, rows_from or target or Path("RUN_DIR"),
                      epochs_scale=epochs_scale, overrides=tuple(overrides or ()),
                      protocol="full" if whole_split else None,
                      checkpoints=parse_checkpoints(checkpoints or [], chosen))
    if dry_run:
        typer.echo(describe(plan))
        return
    check_table_paths(target, paper, chosen.id)
    runner = Runner(plan, data=data, vocab=vocab, train=rows_from is None, device=device, progress=progress,
                    trust=trust_checkpoint, echo=typer.echo)
    runner.check_inputs()
    results = [runner.row_result(row) if row.runs or row.checkpoint else None for row in plan.table.rows]
    doc = table_doc(plan, results)
    md, js = write_table(target, doc)
    measured = sum(row["status"] == "measured" for row in doc["rows"])
    runnable = sum(row["status"] != "published only" for row in doc["rows"])
    typer.echo(f"{paper} table {table}: {measured} of {runnable} reproducible rows measured; wrote {md} and {js}")


def register(app: typer.Typer) -> None:
    """Add `itmatch reproduce` to the top-level app."""
    app.command("reproduce")(reproduce)
