"""Hostile pictures cannot stall or bloat anything: SVG entity bombs are refused at once, a drawing that renders too
long or needs too much memory fails alone and named, and query pictures are decoded at reduced size."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from itmatch.cli import main
from itmatch.features import UnreadableImage, extract_features, load_image
from itmatch.features.svg import SvgRenderer

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">{body}</svg>'

#: 582 bytes: ten entities, each ten references to the one before -- 10^8 copies of "lol" once expanded.
ENTITY_BOMB = ('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a0 "lol">'
               + "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 9))
               + ']><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&a8;</text></svg>')

#: 1.5 KB: groups of ten uses of the group before, 10^7 rectangles to draw; no entities.
USE_BOMB = SVG.format(w=10, h=10, body="<defs><g id='a0'><rect width='1' height='1'/></g>" + "".join(
    f"<g id='a{i}'>" + f"<use href='#a{i - 1}'/>" * 10 + "</g>" for i in range(1, 8)) + "</defs><use href='#a7'/>")


def red_square(path: Path) -> Path:
    path.write_text(SVG.format(w=20, h=10, body="<rect width='10' height='10' fill='red'/>"))
    return path


def test_an_svg_entity_bomb_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.svg"
    bomb.write_text(ENTITY_BOMB)
    started = time.perf_counter()
    with pytest.raises(UnreadableImage, match=r"bomb.svg: the SVG's entity a1 refers to other entities"):
        load_image(bomb)
    assert time.perf_counter() - started < 2.0


def test_plain_internal_entities_are_still_substituted(tmp_path):
    drawing = tmp_path / "illustrator.svg"
    drawing.write_text('<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY ns_svg "http://www.w3.org/2000/svg">'
                       '<!ENTITY red "#ff0000">]><svg xmlns="&ns_svg;" width="20" height="10">'
                       '<rect width="10" height="10" fill="&red;"/></svg>')
    picture = load_image(drawing)
    assert picture.shape == (256, 512, 3)
    np.testing.assert_array_equal(picture[100, 100], [0, 0, 255])  # red, in BGR
    np.testing.assert_array_equal(picture[100, 400], [255, 255, 255])  # transparent became white


def test_a_drawing_that_renders_too_long_is_stopped_and_the_next_one_renders(tmp_path):
    renderer = SvgRenderer(seconds=1.0)  # of CPU time; at most 3 s of wall-clock time
    try:
        renderer.render(b"<svg xmlns='http://www.w3.org/2000/svg' width='4' height='4'/>", "warm-up.svg")
        started = time.perf_counter()
        with pytest.raises(UnreadableImage, match=r"use.svg: rendering this SVG took more than 1 s"):
            renderer.render(USE_BOMB.encode(), "use.svg")
        assert time.perf_counter() - started < 5.0
        png = renderer.render(red_square(tmp_path / "ok.svg").read_bytes(), "ok.svg")
        assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape == (256, 512, 4)
    finally:
        renderer.close()


def test_a_drawing_that_needs_too_much_memory_fails_alone():
    big = cv2.imencode(".png", np.zeros((8000, 8000, 4), np.uint8))[1].tobytes()  # 250 KB, 256 MB decoded
    drawing = SVG.format(w=10, h=10, body="<image width='10' height='10' href='data:image/png;base64,"
                         + base64.b64encode(big).decode() + "'/>").replace(
        "<svg ", "<svg xmlns:xlink='http://www.w3.org/1999/xlink' ")
    renderer = SvgRenderer(seconds=30.0, memory=200 << 20)
    try:
        with pytest.raises(UnreadableImage, match=r"huge.svg: cannot render this SVG \(it needs more memory than"):
            renderer.render(drawing.encode(), "huge.svg")
        assert renderer.render(SVG.format(w=4, h=4, body="").encode(), "next.svg")[:4] == b"\x89PNG"
    finally:
        renderer.close()


def test_extract_names_the_bad_drawing_and_extracts_the_rest(tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "b_bomb.svg").write_text(ENTITY_BOMB)
    red_square(folder / "a_red.svg")
    cv2.imwrite(str(folder / "c_blue.png"), np.full((60, 80, 3), (200, 0, 0), np.uint8))
    started = time.perf_counter()
    assert main(["extract", "--images", str(folder), "--out", str(tmp_path / "feats"), "--skip-unreadable",
                 "--no-progress"]) == 0
    assert time.perf_counter() - started < 60.0
    feats = extract_features(sorted(folder.iterdir()), tmp_path / "feats", progress=False, skip_unreadable=True)
    assert feats.ok.tolist() == [True, False, True]
    assert "b_bomb.svg: the SVG's entity a1 refers to other entities" in feats.images[1]["error"]
    assert feats.images[2]["width"] == 80 and np.abs(feats.features[2]).sum() > 0
    assert main(["extract", "--images", str(folder), "--out", str(tmp_path / "strict"), "--no-progress"]) == 2
    assert "b_bomb.svg: the SVG's entity a1" in capsys.readouterr().err
