"""`itmatch search`: text → pictures or picture → texts over an index, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli.options import Device
from itmatch.errors import ItmatchError


def search(
    index: Annotated[Path, typer.Option(help="Index folder (`itmatch index build`).")],
    query: Annotated[str | None, typer.Argument(help="The text to find pictures for.")] = None,
    image: Annotated[Path | None, typer.Option(
        help="Find captions for this picture instead (read with the index's feature extractor).")] = None,
    top: Annotated[int, typer.Option(help="How many results.", min=1)] = 10,
    shortlist: Annotated[int, typer.Option(help="Candidates the embedding model passes to the re-rankers.",
                                           min=1)] = 100,
    exhaustive: Annotated[bool, typer.Option(help="Re-rank the whole gallery (exact, slow on large ones).")] = False,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists to search (IVF indexes only).", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    device: Device = "cpu",
) -> None:
    """Search an index: the embedding model shortlists, the cross-attention models re-rank.

    Examples:

      itmatch search --index index/tuxpaint "a red apple"

      itmatch search --index index/tuxpaint "a truck" --top 5 --shortlist 30 --json

      itmatch search --index index/tuxpaint --image my_drawing.png
    """
    from itmatch.search import Searcher

    if (query is None) == (image is None):
        raise ItmatchError("give either a text query or --image PICTURE, not both or neither")
    searcher = Searcher(index, device=device, nprobe=nprobe)
    options = {"top": top, "shortlist": shortlist, "exhaustive": exhaustive}
    if image is not None:
        result = searcher.search_picture(image, **options)
    else:
        result = searcher.search_text(query, **options)
    if as_json:
        typer.echo(json.dumps({"query": query, "image": str(image) if image else None,
                               "candidates": result.candidates, "seconds": round(result.seconds, 4),
                               "results": result.hits}, indent=2))
        return
    for rank, hit in enumerate(result.hits, 1):
        name = Path(hit["path"]).name if hit.get("path") else f"#{hit['image']}"
        typer.echo(f"{rank:3d}. {hit['score']:.3f}  (embedding {hit['embedding_score']:+.3f})  image {hit['image']:<6d}"
                   f" {name:<28} {hit.get('caption') or ''}")
    models = searcher.model_names
    stage = f"re-ranked {result.candidates} with {' + '.join(models['rerankers'])}" if models["rerankers"] else \
        "no re-ranker"
    typer.echo(f"{models['embedder']} shortlist, {stage}, {1000 * result.seconds:.0f} ms")


def register(app: typer.Typer) -> None:
    """Add `itmatch search` to the top-level app."""
    app.command("search")(search)
