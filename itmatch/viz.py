"""Attention pictures: the explanation data of ``itmatch.search.explain`` drawn with matplotlib (as a PNG).

One row per cross-attention model: the picture once per word, dimmed where the word's attention is low (the
regions' boxes add up their weights, as on the web page) with the most attended region outlined, and for SAF a bar
chart of the words' filtration weights. Uses matplotlib's object API (no global backend is switched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from itmatch.fileio import atomic_path
from itmatch.search.explain import attention_heatmap

PANEL_INCHES = 2.2
DIMMING = 0.7  # how dark a region without attention gets


def shade(picture: np.ndarray, boxes: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """RGB float picture in [0, 1] dimmed by (1 - attention heat); unchanged without boxes."""
    image = picture.astype(np.float32) / 255.0
    if boxes is None:
        return image
    heat = attention_heatmap(boxes, weights, *image.shape[:2])[:, :, None]
    return image * (1 - DIMMING * (1 - heat)) + 0.08 * DIMMING * (1 - heat)


def draw_explanation(data: dict[str, Any], picture: np.ndarray | None, out: str | Path, max_words: int = 12) -> None:
    """Write the PNG ``out`` for ``data`` (from ``explain_pair``); ``picture`` is the RGB uint8 picture (None: a
    blank square, for features without a picture file). At most ``max_words`` words are drawn per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    picture = np.full((300, 300, 3), 255, np.uint8) if picture is None else picture
    height, width = picture.shape[:2]
    boxes = None if data["boxes"] is None else np.asarray(data["boxes"], dtype=np.float64)
    words = data["words"][:max_words]
    models = data["models"]
    columns = len(words) + any(m["gates"] is not None for m in models)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(models) + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    figure.suptitle(f'"{data["text"]}"', fontsize=11)
    for row, explained in enumerate(models):
        attention = np.asarray(explained["attention"], dtype=np.float64)
        for column, word in enumerate(words):
            axes = figure.add_subplot(len(models), columns, row * columns + column + 1)
            axes.imshow(shade(picture, boxes, attention[column]))
            axes.set_axis_off()
            axes.set_title(word if column else f"{explained['model']} {explained['score']:.3f}\n{word}", fontsize=9)
            if boxes is not None:
                x1, y1, x2, y2 = boxes[int(attention[column].argmax())]
                axes.add_patch(Rectangle((x1 * width, y1 * height), (x2 - x1) * width, (y2 - y1) * height,
                                         fill=False, edgecolor="#ff3b30", linewidth=1.5))
        if explained["gates"] is not None:
            axes = figure.add_subplot(len(models), columns, (row + 1) * columns)
            gates = explained["gates"][:max_words]
            axes.barh(range(len(gates)), gates, color="#e07a2f")
            axes.set_yticks(range(len(gates)), words[:len(gates)], fontsize=8)
            axes.invert_yaxis()
            axes.set_title(f"{explained['model']} word weights", fontsize=9)
            axes.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
