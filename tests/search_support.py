"""Helpers of the search tests: real pictures with real region features, small models saved as checkpoints, and
indexes built from them (built once per test session, read-only for the tests)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from conftest import small_model
from local_server import serving
from itmatch.checkpoint import save_model
from itmatch.data import write_synthetic
from itmatch.data.folder import VOCAB_FILE, write_info, write_pictures
from itmatch.data.precomp import write_split
from itmatch.data.vocab import build_vocab, load_vocab, save_vocab
from itmatch.features import extract_features
from itmatch.models import create_model
from itmatch.search import build_index

#: (colour name, BGR, shape) of the generated pictures; each gets the caption "a COLOUR SHAPE".
PICTURES = [("red", (40, 40, 220), "circle"), ("blue", (200, 80, 30), "square"), ("green", (60, 170, 60), "circle"),
            ("yellow", (40, 210, 230), "square"), ("black", (20, 20, 20), "triangle"),
            ("orange", (30, 140, 250), "triangle"), ("purple", (150, 50, 130), "circle"),
            ("brown", (40, 70, 120), "square"), ("pink", (180, 150, 250), "triangle"), ("grey", (128, 128, 128),
                                                                                      "circle")]
FEATURE_DIM = 1286  # the default extractor's
_BUILT: dict[str, Path] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="itmatch-search-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)  # the suite leaves nothing in /tmp


def wait_until_serving(base: str, process: subprocess.Popen, failure: Callable[[], str], seconds: float = 120
                       ) -> None:
    """Poll ``base``/health until the server answers; fail the test with ``failure()`` (its log) if ``process`` ends
    or ``seconds`` pass first."""
    if not serving(base, process, seconds):
        pytest.fail(f"itmatch serve did not start: {failure()}")


def draw_picture(path: Path, colour: tuple[int, int, int], shape: str, size: int = 160) -> Path:
    """A PNG of one coloured shape on white (an off-centre shape, so boxes differ between pictures)."""
    image = np.full((size, int(size * 1.25), 3), 255, np.uint8)
    if shape == "circle":
        cv2.circle(image, (70, 80), 50, colour, -1)
    elif shape == "square":
        cv2.rectangle(image, (60, 30), (160, 130), colour, -1)
    else:
        cv2.fillPoly(image, [np.array([[40, 140], [100, 20], [170, 140]], np.int32)], colour)
    cv2.imwrite(str(path), image)
    return path


def picture_dataset() -> Path:
    """A dataset folder (split ``test``) of the generated pictures: SSD-MobileNetV2 features, boxes, listing,
    ``dataset.json`` with the extractor, two captions per picture, ``vocab.json``; plus ``features/`` (the
    `itmatch extract` folder of the same pictures)."""
    if "dataset" in _BUILT:
        return _BUILT["dataset"]
    root = _ROOT / "pictures"
    (root / "png").mkdir(parents=True)
    paths = [draw_picture(root / "png" / f"{i:02d}_{name}_{shape}.png", bgr, shape)
             for i, (name, bgr, shape) in enumerate(PICTURES)]
    feats = extract_features(paths, root / "features", progress=False)
    data = root / "data"
    captions = [c for name, _, shape in PICTURES for c in (f"a {name} {shape}", f"a {shape} that is {name}")]
    caption_image = np.repeat(np.arange(len(PICTURES)), 2)
    write_split(data, "test", np.asarray(feats.features), captions, caption_image)
    write_pictures(data, "test", np.asarray(feats.boxes),
                   [{"row": i, "path": str(p), "width": 200, "height": 160} for i, p in enumerate(paths)])
    write_info(data, {"extractor": feats.info["extractor"]})
    save_vocab(build_vocab(captions, threshold=1), data / VOCAB_FILE)
    _BUILT["dataset"] = data
    return data


def save_models(folder: Path, vocab_path: Path, img_dim: int, names: tuple[str, ...] = ("vse", "sgr", "saf")
                ) -> dict[str, Path]:
    """Small random models reading ``img_dim`` features and the vocabulary's words, saved with the vocabulary."""
    vocab = load_vocab(vocab_path)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, name in enumerate(names):
        if name == "vse":
            model = create_model("vse", img_dim=img_dim, embed_size=32, word_dim=12, vocab_size=len(vocab)).eval()
        else:
            model = small_model(name, seed=seed, img_dim=img_dim, vocab_size=len(vocab))
        paths[name] = folder / f"{name}.safetensors"
        save_model(paths[name], model, vocab=vocab.to_json())
    return paths


def picture_models() -> dict[str, Path]:
    """vse, sgr and saf for the picture dataset (1286-d features)."""
    if "picture_models" not in _BUILT:
        data = picture_dataset()
        _BUILT.update({f"model:{k}": v for k, v in
                       save_models(_ROOT / "picture_models", data / "vocab.json", FEATURE_DIM).items()})
        _BUILT["picture_models"] = _ROOT
    return {name: _BUILT[f"model:{name}"] for name in ("vse", "sgr", "saf")}


def picture_index() -> Path:
    """The index of the picture dataset: VSE shortlists, SGR + SAF re-rank."""
    if "picture_index" not in _BUILT:
        models = picture_models()
        _BUILT["picture_index"] = _ROOT / "picture_index"
        build_index(picture_dataset(), _BUILT["picture_index"], split="test", embedder=models["vse"],
                    rerankers=[models["sgr"], models["saf"]])
    return _BUILT["picture_index"]


def synthetic_data(images: int = 40) -> Path:
    """Planted synthetic data (24-d features, 5 captions per picture; splits dev and test) with vocab.json."""
    key = f"synthetic:{images}"
    if key not in _BUILT:
        _BUILT[key] = write_synthetic(_ROOT / key.replace(":", "-"), n_images={"dev": images, "test": images},
                                      feature_dim=24, seed=1)
    return _BUILT[key]
