"""`itmatch extract`: region features for a folder of pictures or a manifest's pictures."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli.options import (DEFAULT_EXTRACTOR, BatchSize, Extractor, ExtractorOptions, Progress, Regions,
                                 parse_options)
from itmatch.errors import ItmatchError


def list_pictures(images: Path) -> list[Path]:
    """The pictures of a folder (recursively, sorted) or of a manifest (``.jsonl``/``.csv``, listing order)."""
    from itmatch.data.sources.manifest import ManifestError, read_manifest
    from itmatch.features import find_images

    if images.is_dir():
        found = find_images(images)
        if not found:
            raise ItmatchError(f"{images}: no pictures found (looked for JPEG, PNG, WebP, TIFF, BMP, SVG, ...)")
        return found
    if not images.is_file():
        raise ItmatchError(f"{images}: no such folder or manifest file")
    manifest = read_manifest(images, check_images=False)
    if manifest.problems:
        raise ManifestError(manifest.path, manifest.problems, "fix them, or leave them out of the manifest")
    return [item.image for item in manifest.items]


def extract(
    images: Annotated[Path, typer.Option(help="A folder of pictures (searched recursively) or a manifest "
                                              "(.jsonl / .csv) whose pictures to extract.")],
    out: Annotated[Path, typer.Option(help="Features folder to write (features.npy, boxes.npy, labels.npy, "
                                           "scores.npy, images.jsonl, extractor.json).")],
    extractor: Extractor = DEFAULT_EXTRACTOR,
    regions: Regions = 36,
    batch_size: BatchSize = 8,
    option: ExtractorOptions = None,
    skip_unreadable: Annotated[bool, typer.Option(
        help="Record pictures that cannot be decoded (zeros + an error in images.jsonl) instead of stopping.")
    ] = False,
    progress: Progress = True,
) -> None:
    """Extract R region features per picture into a resumable, memory-mapped features folder.

    Rerunning skips pictures already done (also after a kill, or when pictures were added).

    Examples:

      itmatch extract --images photos/ --out photos-features

      itmatch extract --images manifest.jsonl --out feats --extractor precomputed --option features_dir=butd/

      torchrun --nproc_per_node 8 -m itmatch extract --images photos/ --out photos-features (a share of the
      pictures per process, merged at the end; see docs/scale.md)
    """
    from itmatch.distributed import launch_rank
    from itmatch.features import extract_features

    options = parse_options(option, reserved=inspect.signature(extract_features).parameters)
    pictures = list_pictures(images)
    result = extract_features(pictures, out, extractor=extractor, regions=regions, batch_size=batch_size,
                              progress=progress, skip_unreadable=skip_unreadable, **options)
    if launch_rank():  # under torchrun rank 0 reports
        return
    n, r, d = result.features.shape
    failed = int((~result.ok).sum())
    rate = f", {result.computed / result.seconds:.1f} pictures/s" if result.computed and result.seconds else ""
    plural = "s" if n != 1 else ""
    unreadable = f", {failed} unreadable" if failed else ""
    typer.echo(f"wrote {out}: {n} picture{plural} x {r} regions x {d} dims ({result.computed} extracted, "
               f"{n - result.computed} reused{rate}{unreadable})")


def register(app: typer.Typer) -> None:
    """Add the top-level ``extract`` command to ``app``."""
    app.command("extract")(extract)
