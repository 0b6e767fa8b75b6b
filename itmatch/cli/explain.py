"""`itmatch explain`: an attention picture of one picture and one text (what each word looks at)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from itmatch.errors import ItmatchError


def explain(
    image: Annotated[int, typer.Option(help="The picture's id: its row in --features, or its id in --index.")],
    text: Annotated[str, typer.Option(help="The text whose words' attention to draw.")],
    out: Annotated[Path, typer.Option(help="The PNG to write.")],
    model: Annotated[list[Path] | None, typer.Option(
        help="Cross-attention model (sgr, saf, tshsr); repeatable. With --features.")] = None,
    features: Annotated[Path | None, typer.Option(
        help="An `itmatch extract` folder or a dataset folder (with --split) holding the picture.")] = None,
    split: Annotated[str | None, typer.Option(help="The split of a dataset folder.")] = None,
    index: Annotated[Path | None, typer.Option(
        help="Or: an index folder; its re-rankers explain its picture --image.")] = None,
    vocab: Annotated[Path | None, typer.Option(help="Vocabulary JSON for models that store none.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the attention data as JSON.")] = None,
) -> None:
    """Draw which regions each word of --text attends to in picture --image (and SAF's per-word weights).

    Examples:

      itmatch explain --model runs/demo/sgr/best.pt --model runs/demo/saf/best.pt --features data/tuxpaint
        --split test --image 0 --text "a green frog" --out frog.png

      itmatch explain --index index/tuxpaint --image 12 --text "a red apple" --out apple.png --json apple.json
    """
    from itmatch.loading import load_models
    from itmatch.features.images import load_image
    from itmatch.fileio import check_outputs, write_json
    from itmatch.search import Searcher, explain_pair
    from itmatch.search.gallery import check_image_id, open_gallery
    from itmatch.viz import draw_explanation

    check_outputs({"--out": out, "--json": json_out}, {"--model": model, "--vocab": vocab})
    if out.suffix.lower() != ".png":
        raise ItmatchError(f"--out {out}: explain draws a PNG; name the file *.png")
    if index is not None:
        if model or features:
            raise ItmatchError("give either --index, or --model with --features, not both")
        data = Searcher(index).explain(image, text)
        path = data.get("path")
    else:
        if not model or features is None:
            raise ItmatchError("give --model CKPT (one or more) and --features DIR, or an --index")
        gallery = open_gallery(features, split)
        check_image_id(image, gallery.n_images)
        models = [load_models([checkpoint], vocab) for checkpoint in model]
        boxes = None if gallery.boxes is None else gallery.boxes[image]
        data = explain_pair(models, gallery.read_features(np.array([image]))[0], text, boxes)
        path = gallery.pictures[image].get("path")
    check_outputs({"--out": out, "--json": json_out}, {"the picture": path})  # drawn from it, never over it
    picture = load_image(path)[:, :, ::-1] if path and Path(path).is_file() else None
    draw_explanation(data, picture, out)
    if json_out is not None:
        write_json(json_out, data)
    for explained in data["models"]:
        looks = ", ".join(f"{word}: region {int(np.argmax(row))} ({max(row):.2f})"
                          for word, row in zip(data["words"][1:-1], explained["attention"][1:-1]))
        typer.echo(f"{explained['model']} score {explained['score']:.3f}; {looks}")
    typer.echo(f"wrote {out}" + ("" if picture is not None else " (no picture file: regions on a blank square)"))


def register(app: typer.Typer) -> None:
    """Add `itmatch explain` to the top-level app."""
    app.command("explain")(explain)
