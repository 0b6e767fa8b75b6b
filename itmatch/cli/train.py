"""`itmatch train`: train any registered model from a recipe, resumably, on one or many processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli.options import Progress, TrainDevice
from itmatch.errors import ItmatchError


def train(
    data: Annotated[Path, typer.Option(help="Precomp folder with the train and dev splits.")],
    vocab: Annotated[Path, typer.Option(help="Vocabulary JSON (the authors' layout; stored in the checkpoints).")],
    out: Annotated[Path, typer.Option(help="Run directory: config.toml, last.pt, best.pt, log.jsonl.")],
    config: Annotated[Path | None, typer.Option(
        help="Recipe TOML (configs/*.toml). With --resume it defaults to the run's own config.toml.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last.pt (same result as never stopping).")] = False,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe value, SECTION.KEY=VALUE or model.args.NAME=VALUE (repeatable).")] = None,
    device: TrainDevice = "auto",
    progress: Progress = True,
) -> None:
    """Train a model: validation on dev after every epoch, best/last checkpoints, a JSON-lines log.

    Examples:

      itmatch train --config configs/sgr_f30k.toml --data data/f30k_precomp
        --vocab vocab/f30k_precomp_vocab.json --out runs/sgr_f30k

      itmatch train --out runs/sgr_f30k --data data/f30k_precomp --vocab vocab/f30k_precomp_vocab.json --resume

      itmatch train --config configs/saf_f30k.toml ... --set optim.lr=3e-4 --set run.precision=bf16

      torchrun --nproc_per_node 4 -m itmatch train --config configs/sgr_coco.toml ...
    """
    from itmatch.distributed import launch_rank
    from itmatch.train import load_config
    from itmatch.train import train as run_training
    from itmatch.train.loop import run_config_path

    if config is None:
        if not resume:
            raise ItmatchError("give the recipe with --config (e.g. configs/sgr_f30k.toml)")
        config = run_config_path(out)
    recipe = load_config(config, overrides or [])
    result = run_training(recipe, data=data, vocab=vocab, out=out, resume=resume, device=device,
                          progress=progress)
    if launch_rank() == 0:
        typer.echo(result.summary())


def register(app: typer.Typer) -> None:
    """Add `itmatch train` to the top-level app."""
    app.command("train")(train)
