"""Region feature extraction on real Tux Paint pictures: shapes, determinism, SVG, EXIF, alpha, resume, plug-ins."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from itmatch.cli import extract as extract_cli
from itmatch.errors import ItmatchError
from itmatch.features import (
    Regions,
    UnreadableImage,
    extract_features,
    get_extractor,
    list_extractors,
    load_image,
    open_features,
    register_extractor,
)
from itmatch.features.images import SVG_SIZE
from itmatch.features.ssd import DIM, SSDMobileNetV2, grid_boxes, pool_boxes

R = 36
FILES = ("features.npy", "boxes.npy", "labels.npy", "scores.npy", "images.jsonl", "extractor.json")


@pytest.fixture(scope="module")
def stamps_dir() -> Path:
    from itmatch.data.sources.tuxpaint import stamps_folder

    try:
        return stamps_folder()[0]
    except ItmatchError as exc:
        pytest.skip(f"Tux Paint stamps unavailable ({exc}); run scripts/install_system_deps.sh")


@pytest.fixture(scope="module")
def pictures(stamps_dir: Path) -> list[Path]:
    """Five real stamps: four PNG (birds, a frog) and one SVG (a bee, an Illustrator export with entities)."""
    names = ["animals/birds/blackbird.png", "animals/birds/hen.png", "animals/amphibians/frog.png",
             "food/fruit/apple_fuji.png", "animals/insects/bee.svg"]
    paths = [stamps_dir / n for n in names]
    assert all(p.is_file() for p in paths), paths
    return paths


@pytest.fixture(scope="module")
def extracted(pictures: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feats") / "a"
    extract_features(pictures, out, progress=False)
    return out


def test_shapes_and_contents(extracted: Path, pictures: list[Path]) -> None:
    feats = open_features(extracted)
    n = len(pictures)
    assert feats.features.shape == (n, R, DIM) == (5, 36, 1286)
    assert feats.features.dtype == np.float32 and feats.boxes.shape == (n, R, 4)
    assert feats.labels.shape == (n, R) and feats.scores.shape == (n, R)
    assert np.isfinite(feats.features).all()
    boxes = np.asarray(feats.boxes)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    # grid boxes carry label -1 and score 0; detections a COCO id and a score >= min_score
    grid = feats.labels == -1
    assert (feats.scores[grid] == 0).all() and (feats.scores[~grid] >= 0.2).all()
    assert (~grid).any(), "the detector should find the birds"
    # the last 6 dims are the box geometry
    geometry = feats.features[..., -6:]
    np.testing.assert_array_equal(geometry[..., :4], boxes)
    np.testing.assert_allclose(geometry[..., 4:], boxes[..., 2:] - boxes[..., :2], atol=1e-6)
    assert [Path(r["path"]) for r in feats.images] == [p.resolve() for p in pictures]
    assert feats.images[-1]["width"] == SVG_SIZE  # the bee is wider than tall
    assert feats.info["dim"] == DIM and feats.info["extractor"]["name"] == "ssd-mobilenet-v2"


def test_deterministic_bytes(extracted: Path, pictures: list[Path], tmp_path: Path) -> None:
    again = tmp_path / "b"
    extract_features(pictures, again, progress=False, batch_size=2)  # other batches, same bytes
    for name in FILES:
        assert (extracted / name).read_bytes() == (again / name).read_bytes(), name


def test_blank_picture_still_gets_r_regions(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 200, 3), 255, np.uint8))
    feats = extract_features([blank], tmp_path / "out", progress=False)
    assert feats.features.shape == (1, R, DIM)
    assert (feats.labels == -1).all() and (feats.scores == 0).all()
    np.testing.assert_array_equal(feats.boxes[0], grid_boxes(R))
    np.testing.assert_array_equal(feats.boxes[0, 0], [0, 0, 1, 1])  # the whole picture comes first


def test_pool_boxes_is_the_mean_over_covered_cells() -> None:
    rng = np.random.default_rng(0)
    fmap = rng.random((8, 10, 10), dtype=np.float32)
    boxes = np.array([[0, 0, 0.5, 0.5], [0.3, 0.1, 0.7, 0.4], [0.42, 0.42, 0.43, 0.43]], np.float32)
    pooled = pool_boxes(fmap, boxes)
    np.testing.assert_allclose(pooled[0], fmap[:, :5, :5].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], fmap[:, 1:4, 3:7].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooled[2], fmap[:, 4, 4], rtol=1e-6)  # a box inside one cell: that cell


def test_svg_renders_on_white(pictures: list[Path]) -> None:
    bee = load_image(pictures[-1])
    assert bee.dtype == np.uint8 and bee.shape[2] == 3 and max(bee.shape[:2]) == SVG_SIZE
    assert (bee[0, 0] == 255).all()  # transparent background became white
    assert (bee < 50).all(axis=2).mean() > 0.1  # and the black drawing is there


def _exif(orientation: int) -> bytes:
    """A minimal big-endian TIFF/EXIF block holding one Orientation tag."""
    return (b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))


def _left_red_right_blue(alpha: bool) -> np.ndarray:
    image = np.zeros((20, 40, 4 if alpha else 3), np.uint8)
    image[:, :20, :3] = (0, 0, 255)
    image[:, 20:, :3] = (255, 0, 0)
    if alpha:
        image[..., 3] = 255
        image[:4, :4] = (0, 255, 0, 0)  # a transparent top-left corner (green underneath: makes it asymmetric)
    return image


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    jpeg = cv2.imencode(".jpg", _left_red_right_blue(alpha=False))[1].tobytes()
    app1 = b"Exif\x00\x00" + _exif(6)  # 6: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])
    image = load_image(path)
    assert image.shape == (40, 20, 3)
    assert image[2, 10, 2] > 200 and image[-3, 10, 0] > 200  # red (left) is now on top, blue at the bottom


def test_exif_orientation_with_alpha_png(tmp_path: Path) -> None:
    png = cv2.imencode(".png", _left_red_right_blue(alpha=True))[1].tobytes()
    chunk = b"eXIf" + _exif(6)
    exif = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    path = tmp_path / "rotated.png"
    path.write_bytes(png[:33] + exif + png[33:])  # after the signature and IHDR
    image = load_image(path)
    assert image.shape == (40, 20, 3)
    assert (image[1, -2] == 255).all()  # the transparent corner turned with the picture and became white
    assert tuple(image[10, 5]) == (0, 0, 255) and tuple(image[-3, 10]) == (255, 0, 0)


def test_unreadable_picture(tmp_path: Path, pictures: list[Path]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(UnreadableImage, match="broken.png"):
        load_image(broken)
    with pytest.raises(UnreadableImage, match="broken.png"):
        extract_features([pictures[0], broken], tmp_path / "out", progress=False, batch_size=1)
    feats = extract_features([pictures[0], broken], tmp_path / "out", progress=False, skip_unreadable=True)
    assert feats.ok.tolist() == [True, False] and "broken.png" in feats.images[1]["error"]
    assert feats.computed == 1  # the first picture was kept from the failed run


class _Killed(Exception):
    pass


class _DiesAfter:
    """The real extractor (same config) that dies after ``batches`` batches, like a killed process."""

    def __init__(self, batches: int) -> None:
        self.inner = SSDMobileNetV2(regions=R)
        self.name, self.regions, self.left = self.inner.name, R, batches

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def extract(self, paths: Sequence[Path]) -> list[Regions]:
        if self.left == 0:
            raise _Killed
        self.left -= 1
        return self.inner.extract(paths)


def test_resume_after_kill_skips_finished_pictures(extracted: Path, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    with pytest.raises(_Killed):
        extract_features(pictures, out, extractor=_DiesAfter(batches=2), batch_size=2, progress=False)
    assert not (out / "extractor.json").exists() and not (out / "features.npy").exists()  # not finished
    with pytest.raises(ItmatchError, match="did not finish"):
        open_features(out)
    feats = extract_features(pictures, out, progress=False, batch_size=2)
    assert feats.computed == 1  # 4 of 5 were done before the "kill"
    for name in FILES:
        assert (extracted / name).read_bytes() == (out / name).read_bytes(), name
    assert not (out / ".partial").exists()
    assert extract_features(pictures, out, progress=False).computed == 0  # finished: nothing to do


def test_added_pictures_reuse_finished_rows(extracted: Path, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "grow"
    extract_features(pictures[:3], out, progress=False)
    feats = extract_features(pictures, out, progress=False)
    assert feats.computed == 2
    np.testing.assert_array_equal(feats.features, open_features(extracted).features)


def test_registry_and_custom_extractor(tmp_path: Path, pictures: list[Path]) -> None:
    assert {"ssd-mobilenet-v2", "precomputed"} <= set(list_extractors())
    with pytest.raises(ItmatchError, match="unknown extractor 'nope'.*ssd-mobilenet-v2"):
        get_extractor("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("ssd-mobilenet-v2")(lambda **kw: None)

    class MeanColour:
        """A toy plug-in: one region, the mean BGR colour."""

        name = "test-mean-colour"

        def __init__(self, regions: int = 1) -> None:
            self.regions = regions

        def config(self) -> dict[str, Any]:
            return {"name": self.name, "regions": self.regions}

        def extract(self, paths: Sequence[Path]) -> list[Regions]:
            out = []
            for path in paths:
                image = load_image(path)
                feature = np.tile(image.reshape(-1, 3).mean(0), (self.regions, 1)).astype(np.float32)
                out.append(Regions(feature, np.tile(np.float32([0, 0, 1, 1]), (self.regions, 1)),
                                   np.full(self.regions, -1, np.int32), np.zeros(self.regions, np.float32),
                                   image.shape[1], image.shape[0]))
            return out

    register_extractor("test-mean-colour")(MeanColour)
    feats = extract_features(pictures[:2], tmp_path / "mean", extractor="test-mean-colour", regions=2,
                             progress=False)
    assert feats.features.shape == (2, 2, 3)
    for row, path in enumerate(pictures[:2]):  # each picture's own mean colour, in the pictures' order
        colour = load_image(path).reshape(-1, 3).mean(0)
        np.testing.assert_allclose(np.asarray(feats.features[row]), np.tile(colour, (2, 1)), rtol=1e-5)


def test_precomputed_extractor(tmp_path: Path, pictures: list[Path]) -> None:
    folder = tmp_path / "butd"
    folder.mkdir()
    rng = np.random.default_rng(1)
    x = rng.random((10, 2048), dtype=np.float32)
    bbox = np.tile(np.float32([10, 20, 50, 60]), (10, 1))
    np.savez(folder / f"{pictures[0].stem}.npz", x=x, bbox=bbox, image_w=100, image_h=200)
    np.save(folder / f"{pictures[1].stem}.npy", x[:40])
    feats = extract_features(pictures[:2], tmp_path / "out", extractor="precomputed", features_dir=str(folder),
                             progress=False)
    assert feats.features.shape == (2, R, 2048)
    np.testing.assert_array_equal(feats.features[0], x[np.arange(R) % 10])  # 10 regions repeated to 36
    np.testing.assert_allclose(feats.boxes[0, 0], [0.1, 0.1, 0.5, 0.3])
    assert feats.images[0]["width"] == 100 and feats.images[1]["height"] == load_image(pictures[1]).shape[0]
    with pytest.raises(ItmatchError, match="no precomputed features"):
        extract_features(pictures[2:3], tmp_path / "none", extractor="precomputed", features_dir=str(folder),
                         progress=False)


def test_extract_cli(tmp_path: Path, pictures: list[Path]) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for p in pictures[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    app = typer.Typer()
    extract_cli.register(app)
    app.command("other")(lambda: None)  # keep `extract` a named sub-command
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--images", str(folder), "--out", str(tmp_path / "f"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 pictures x 36 regions x 1286 dims (2 extracted, 0 reused" in result.output
    again = runner.invoke(app, ["extract", "--images", str(folder), "--out", str(tmp_path / "f"), "--no-progress"])
    assert "(0 extracted, 2 reused" in again.output
    rows = [json.loads(line) for line in (tmp_path / "f" / "images.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in pictures[:2])
    bad = runner.invoke(app, ["extract", "--images", str(folder), "--out", str(tmp_path / "g"), "--option", "x"])
    assert bad.exit_code != 0 and "KEY=VALUE" in str(bad.exception)


def test_an_extractor_is_rebuilt_from_its_stored_config_with_the_same_settings() -> None:
    from itmatch.features import extractor_from_config, get_extractor

    made = get_extractor("ssd-mobilenet-v2", regions=12, min_score=0.35, nms_iou=0.6)
    again = extractor_from_config(made.config())  # the config also holds versions and D, which are not settings
    assert again.config() == made.config() and (again.regions, again.min_score, again.nms_iou) == (12, 0.35, 0.6)


class _Thresholded:
    """A plug-in extractor whose factory takes ``**options`` (the documented factory shape)."""

    name = "test-thresholded"

    def __init__(self, regions: int = 36, threshold: float = 0.5, model_dir: Path | None = None) -> None:
        self.regions, self.threshold, self.model_dir = regions, threshold, model_dir

    def config(self) -> dict:
        return {"name": self.name, "regions": self.regions, "threshold": self.threshold, "version": "1.0"}


def test_a_plug_in_extractor_keeps_its_settings_and_takes_options_of_any_type() -> None:
    from itmatch.features import extractor_from_config, get_extractor, register_extractor

    register_extractor(_Thresholded.name)(lambda regions=36, **options: _Thresholded(regions, **options))
    made = get_extractor(_Thresholded.name, regions=np.int64(12), threshold=0.9, model_dir=Path("/models"))
    assert (made.regions, made.threshold, made.model_dir) == (12, 0.9, Path("/models"))
    again = extractor_from_config(made.config())  # the class's settings, though the factory takes **options
    assert (again.regions, again.threshold) == (12, 0.9)
