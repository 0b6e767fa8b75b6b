"""The demo's last step: example text searches over a dataset's test pictures, printed and drawn.

``python -m itmatch.demo --data DIR --checkpoint A --checkpoint B --query "..." --figure runs/demo/demo.png``
scores each free-text query against every test picture with the given model (an ensemble when several), prints
the top pictures (file name, caption, score) and draws them into one PNG (thumbnails with captions, OpenCV).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from itmatch.data.folder import pictures_path, read_pictures
from itmatch.data.precomp import ImageRows, load_split
from itmatch.errors import ItmatchError
from itmatch.features.images import load_image
from itmatch.features.thumbnail import shrink
from itmatch.fileio import atomic_path
from itmatch.loading import caption_tokens, load_models
from itmatch.scoring import score_matrix

CELL = 180


def example_searches(data: Path, checkpoints: Sequence[Path], queries: Sequence[str], top: int = 3,
                     split: str = "test") -> list[dict]:
    """For each query: the ``top`` pictures of ``split`` with path, first caption and score, best first."""
    model, vocab = load_models(checkpoints, None)
    if vocab is None and model.tokenize is None:
        raise ItmatchError(f"{checkpoints[0]}: stores no vocabulary; train it with `itmatch train`")
    gallery = load_split(data, split)
    paths = _image_paths(data, split, gallery.n_images)
    first_caption = {int(i): c for c, i in reversed(list(zip(gallery.captions, gallery.caption_image)))}
    sims = score_matrix(model, ImageRows(gallery, np.arange(gallery.n_images)),
                        caption_tokens(model, vocab, list(queries)))  # a BERT-family model reads its own tokens
    results = []
    for column, query in enumerate(queries):
        best = np.argsort(-sims[:, column], kind="stable")[:top]
        results.append({"query": query, "hits": [{"image": paths[i], "caption": first_caption[int(i)],
                                                  "score": float(sims[i, column])} for i in best]})
    return results


def _image_paths(data: Path, split: str, n_images: int) -> list[str]:
    pictures = read_pictures(data, split)
    if pictures is None:
        raise ItmatchError(f"{pictures_path(data, split)}: missing; build the dataset with `itmatch data build` to "
                           "keep picture paths")
    if len(pictures) != n_images:
        raise ItmatchError(f"{pictures_path(data, split)}: {len(pictures)} pictures listed, but the split has "
                           f"{n_images}")
    return [pictures[row]["path"] for row in sorted(pictures)]


def format_results(results: list[dict]) -> str:
    """Plain-text lines: each query, then its hits as rank, score, file name and caption."""
    lines = []
    for result in results:
        lines.append(f'query: "{result["query"]}"')
        for rank, hit in enumerate(result["hits"], 1):
            lines.append(f"  {rank}. {hit['score']:.3f}  {Path(hit['image']).name:<32} {hit['caption']}")
    return "\n".join(lines)


def draw_results(results: list[dict], out: Path) -> None:
    """One row per query: the query text, then the hits as thumbnails with caption and score (PNG, atomic)."""
    label_width, caption_height = 260, 44
    rows = []
    for result in results:
        cells = [_text_cell(result["query"], label_width, CELL + caption_height, scale=0.6)]
        for hit in result["hits"]:
            thumb = _thumbnail(load_image(hit["image"]))
            caption = _text_cell(f"{hit['score']:.3f} {hit['caption']}", CELL, caption_height, scale=0.42)
            cells.append(np.vstack([thumb, caption]))
        rows.append(np.hstack([np.pad(c, ((4, 4), (4, 4), (0, 0)), constant_values=255) for c in cells]))
    width = max(r.shape[1] for r in rows)
    canvas = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    with atomic_path(out) as tmp:
        ok, encoded = cv2.imencode(".png", canvas)
        if not ok:
            raise ItmatchError(f"{out}: could not encode the figure")
        tmp.write_bytes(encoded.tobytes())


def _thumbnail(image: np.ndarray) -> np.ndarray:
    small = shrink(image, CELL)
    out = np.full((CELL, CELL, 3), 255, np.uint8)
    y, x = (CELL - small.shape[0]) // 2, (CELL - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _text_cell(text: str, width: int, height: int, scale: float) -> np.ndarray:
    """White cell with ``text`` wrapped to ``width`` (ASCII; OpenCV's Hershey font)."""
    cell = np.full((height, width, 3), 255, np.uint8)
    text = text.encode("ascii", "replace").decode()
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 8 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    step = int(30 * scale) + 4
    for i, text_line in enumerate(lines[: max(1, height // step)]):
        cv2.putText(cell, text_line, (4, step * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, action="append", required=True)
    parser.add_argument("--query", action="append", required=True)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)
    try:
        results = example_searches(args.data, args.checkpoint, args.query, args.top)
        print(format_results(results))
        if args.figure:
            draw_results(results, args.figure)
            print(f"wrote {args.figure}")
    except ItmatchError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
