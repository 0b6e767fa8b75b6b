"""Attention data of one picture and one text: what each word of the text looks at, per cross-attention model.

The numbers come from the models' own score path (``RegionWordMatcher.explain``): per word a distribution over
the picture's regions (the text-to-image attention), and for SAF the filtration weight of each word. The web page
and ``itmatch explain`` (``itmatch.viz``) draw the same dict.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from itmatch.data.tokenize import tokenize
from itmatch.data.vocab import SPECIAL_TOKENS, UNK, Vocabulary
from itmatch.errors import ItmatchError
from itmatch.loading import caption_tokens, check_known_words
from itmatch.models.base import Matcher
from itmatch.scoring import pad_tokens


def explainable(models: Sequence[tuple[Matcher, Vocabulary | None]]) -> list[tuple[Matcher, Vocabulary | None]]:
    """The models (with their vocabularies) that can explain a pair: the cross-attention ones."""
    return [(model, vocab) for model, vocab in models if model.can_explain]


def explain_pair(models: Sequence[tuple[Matcher, Vocabulary | None]], features: np.ndarray, text: str,
                 boxes: np.ndarray | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Attention data of the picture with region ``features`` (R, D) and ``text``, for each cross-attention model.

    Returns ``{"text", "words" (L,), "known" (L,) False for words outside the vocabulary, "boxes" (R, 4) or None,
    "models": [{"model", "score", "attention" (L × R, rows sum to 1), "gates" (L,) or None, "global_gate"}]}``;
    words include the ``<start>``/``<end>`` tokens the models read.
    """
    usable = explainable(models)
    if not usable:
        raise ItmatchError("no cross-attention model (sgr, saf, tshsr) to explain with; give one as --model, "
                           "or build the index with --reranker")
    if not text.strip():
        raise ItmatchError("the text to explain is empty; give a few words")
    for model, vocab in usable:
        check_known_words(model, vocab, text)
    image = torch.as_tensor(np.asarray(features, dtype=np.float32)[None]).to(device)
    explained, tokens = [], []
    with torch.inference_mode():
        for model, vocab in usable:
            model.eval()
            tokens = caption_tokens(model, vocab, [text])[0]
            ids, lengths = pad_tokens([tokens])
            result = model.explain(model.encode_images(image), model.encode_texts(ids.to(device), lengths))
            explained.append({
                "model": model.model_name,
                "score": float(result["score"]),
                "attention": result["attention"].float().cpu().numpy().round(5).tolist(),
                "gates": None if result["gates"] is None else result["gates"].float().cpu().numpy().round(5).tolist(),
                "global_gate": None if result["global_gate"] is None else round(float(result["global_gate"]), 5),
            })
    words = [SPECIAL_TOKENS[1], *tokenize(text), SPECIAL_TOKENS[2]]
    return {"text": text, "words": words, "known": [t != UNK for t in tokens],
            "boxes": None if boxes is None else np.asarray(boxes, dtype=np.float32).round(4).tolist(),
            "models": explained}


def attention_heatmap(boxes: np.ndarray, weights: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) float map in [0, 1]: at each pixel the summed weight of the regions whose box covers it,
    divided by the largest value (how the web page shades a picture by one word's attention)."""
    heat = np.zeros((height, width), dtype=np.float64)
    for (x1, y1, x2, y2), weight in zip(np.asarray(boxes, dtype=np.float64), weights):
        top, bottom = int(y1 * height), max(int(y1 * height) + 1, int(np.ceil(y2 * height)))
        left, right = int(x1 * width), max(int(x1 * width) + 1, int(np.ceil(x2 * width)))
        heat[top:bottom, left:right] += weight
    peak = heat.max()
    return heat / peak if peak > 0 else heat
