"""`itmatch data build ...`: precomp datasets from a manifest of your own pictures, or from the Tux Paint stamps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli.options import (DEFAULT_EXTRACTOR, BatchSize, Extractor, ExtractorOptions, Progress, Regions,
                                 parse_options)

app = typer.Typer(help="Build precomp datasets (features + captions + vocab.json) from pictures.",
                  no_args_is_help=True)


@app.command("manifest")
def manifest(
    manifest: Annotated[Path, typer.Option(help="JSON Lines ({\"image\": path, \"captions\": [...]}) or CSV "
                                                "(image,caption rows); paths relative to the manifest's folder.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (must be new, empty or an earlier build).")],
    split: Annotated[str, typer.Option(help="train/dev/test fractions.")] = "0.8/0.1/0.1",
    seed: Annotated[int, typer.Option(help="Seed of the deterministic split.", min=0)] = 0,
    skip_bad: Annotated[bool, typer.Option(help="Leave bad lines out (and list them) instead of stopping.")] = False,
    extractor: Extractor = DEFAULT_EXTRACTOR,
    regions: Regions = 36,
    option: ExtractorOptions = None,
    features: Annotated[Path | None, typer.Option(
        help="Features cache folder (default: under $ITMATCH_CACHE/features); resumable.")] = None,
    batch_size: BatchSize = 8,
    progress: Progress = True,
) -> None:
    """Check a manifest, extract region features, and write a train/dev/test precomp dataset with vocab.json.

    Every bad line (missing or undecodable picture, empty caption, picture listed twice) is reported at once as
    file:line: reason, and nothing is written.

    Example: itmatch data build manifest --manifest photos/captions.jsonl --out data/photos --split 0.8/0.1/0.1
    """
    from itmatch.data.sources.dataset import build_from_manifest

    result = build_from_manifest(manifest, out, split=split, seed=seed, skip_bad=skip_bad, extractor=extractor,
                                 regions=regions, features_dir=features, batch_size=batch_size, progress=progress,
                                 extractor_options=parse_options(option))
    if result is None:  # a torchrun process other than rank 0: rank 0 writes the dataset and reports
        return
    for problem in result.skipped:
        typer.echo(f"skipped {problem}", err=True)
    typer.echo(result.summary())


@app.command("tuxpaint")
def tuxpaint(
    out: Annotated[Path, typer.Option(help="Dataset folder to write (must be new, empty or an earlier build).")],
    with_openclipart: Annotated[bool, typer.Option(
        help="Add the ~7,450 Open Clip Art drawings (noisy title/keyword captions) to the train split.")] = False,
    dev: Annotated[int, typer.Option(help="Dev stamps.", min=0)] = 100,
    test: Annotated[int, typer.Option(help="Test stamps.", min=0)] = 150,
    seed: Annotated[int, typer.Option(help="Seed of the deterministic split.", min=0)] = 0,
    limit: Annotated[int | None, typer.Option(help="Use only this many stamps (and drawings), for a quick "
                                                      "trial.", min=1)] = None,
    extractor: Extractor = DEFAULT_EXTRACTOR,
    regions: Regions = 36,
    option: ExtractorOptions = None,
    batch_size: BatchSize = 8,
    progress: Progress = True,
) -> None:
    """Build the Tux Paint stamps dataset (950 captioned pictures) from Debian's tuxpaint-stamps-default.

    Uses /usr/share/tuxpaint/stamps when installed, else downloads the package with `apt-get download` into
    $ITMATCH_CACHE (default ~/.cache/itmatch). Features are cached: a second build takes seconds.

    Examples:

      itmatch data build tuxpaint --out data/tuxpaint

      itmatch data build tuxpaint --out data/tux40 --limit 40 --dev 8 --test 8
    """
    from itmatch.data.sources.tuxpaint import build_tuxpaint

    result = build_tuxpaint(out, with_openclipart=with_openclipart, dev=dev, test=test, seed=seed, limit=limit,
                            extractor=extractor, regions=regions, batch_size=batch_size, progress=progress,
                            extractor_options=parse_options(option))
    if result is not None:  # None: a torchrun process other than rank 0, which writes the dataset and reports
        typer.echo(result.summary())
