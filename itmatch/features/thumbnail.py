"""Picture thumbnails for display (the web page's previews, the demo's figure)."""

from __future__ import annotations

import cv2
import numpy as np


def shrink(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` resized so that its longer side is ``longest`` pixels (area averaging; aspect kept)."""
    h, w = image.shape[:2]
    scale = longest / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
