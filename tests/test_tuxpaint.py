"""The Tux Paint dataset on the real Debian package: stamp and caption counts, splits, builds, Open Clip Art."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from itmatch.cli.build import app
from itmatch.data import load_split, load_vocab
from itmatch.data.sources.debian import cache_dir
from itmatch.data.sources.dataset import split_items
from itmatch.data.sources.manifest import Item
from itmatch.data.sources.tuxpaint import (
    build_tuxpaint,
    clean_caption,
    find_stamps,
    stamps_folder,
)
from itmatch.errors import ItmatchError

KNOWN_VERSION = "2022.06.04-1"  # Debian 12's package: 961 stamp pictures, 950 with an English caption


@pytest.fixture(scope="module")
def stamps() -> tuple[Path, str]:
    try:
        return stamps_folder()
    except ItmatchError as exc:
        pytest.skip(f"Tux Paint stamps unavailable ({exc}); run scripts/install_system_deps.sh")


@pytest.fixture()
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh features cache for this test run that still sees the unpacked Debian packages."""
    packages = cache_dir() / "debian"
    folder = tmp_path_factory.getbasetemp() / "cache"
    folder.mkdir(exist_ok=True)
    if packages.is_dir() and not (folder / "debian").exists():
        (folder / "debian").symlink_to(packages)
    monkeypatch.setenv("ITMATCH_CACHE", str(folder))
    return folder


def test_stamps_and_captions(stamps: tuple[Path, str]) -> None:
    folder, version = stamps
    found, uncaptioned = find_stamps(folder)
    if version == KNOWN_VERSION:
        assert len(found) == 950 and uncaptioned == []
        assert sum(s.image.suffix == ".svg" for s in found) == 165  # SVG-only stamps; PNG wins when both exist
    assert len(found) >= 900
    names = [s.name for s in found]
    assert len(set(names)) == len(names) and not any(n.endswith(("_mirror", "_flip")) for n in names)
    for stamp in found:
        assert stamp.caption.strip() == stamp.caption and stamp.caption and "\n" not in stamp.caption
        assert not any(ch in stamp.caption for ch in "\u2018\u2019\u201c\u201d\u2014"), stamp.caption
        assert "utf8=" not in stamp.caption
    by_name = {s.name: s.caption for s in found}
    assert by_name["animals/birds/blackbird"] == "A blackbird."
    assert by_name["food/fruit/apple_fuji"] == 'A "Fuji" apple.'


def test_clean_caption() -> None:
    assert clean_caption("  Mars\u2014the red planet. It\u2019s just beyond earth.  ") == \
        "Mars - the red planet. It's just beyond earth."
    assert clean_caption("\u2013 Because a brain is a terrible thing to waste\u2026") == \
        "Because a brain is a terrible thing to waste..."
    assert clean_caption("fr.utf8=Un merle.") is None
    assert clean_caption("   ") is None and clean_caption("123") is None


def test_full_split_sizes_are_deterministic(stamps: tuple[Path, str]) -> None:
    found, _ = find_stamps(stamps[0])
    items = [Item(s.image, (s.caption,), s.name, s.name) for s in found]
    splits = split_items(items, dev=100, test=150, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": len(found) - 250, "dev": 100, "test": 150}
    assert splits == split_items(items, dev=100, test=150, seed=0)
    assert split_items(items, dev=100, test=150, seed=1)["test"] != splits["test"]
    keys = [{i.key for i in v} for v in splits.values()]
    assert sum(map(len, keys)) == len(set.union(*keys)) == len(found)


def test_quick_build_with_limit(stamps: tuple[Path, str], cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "tux"
    args = ["tuxpaint", "--out", str(out), "--limit", "30", "--dev", "6", "--test", "6", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train 18 images/18 captions, dev 6 images/6 captions, test 6 images/6 captions" in result.output
    for split, n in (("train", 18), ("dev", 6), ("test", 6)):
        data = load_split(out, split)
        assert data.n_images == data.n_captions == n and data.features.shape[1:] == (36, 1286)
        assert all(c.strip() for c in data.captions)
    assert len(load_vocab(out / "vocab.json")) > 4
    info = json.loads((out / "dataset.json").read_text())
    assert info["package"].startswith("tuxpaint-stamps-default ") and info["stamps"] == 30

    started = time.perf_counter()  # features are cached: the second build only writes files
    again = build_tuxpaint(out, limit=30, dev=6, test=6, progress=False)
    assert again.computed == 0 and time.perf_counter() - started < 20


def test_only_rank_0_writes_under_torchrun(stamps: tuple[Path, str], cache: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A process other than rank 0 extracts its share but writes no dataset (rank 0 writes it alone)."""
    monkeypatch.setenv("RANK", "1")
    assert build_tuxpaint(tmp_path / "tux", limit=12, dev=3, test=3, progress=False) is None
    assert not (tmp_path / "tux").exists()


def test_openclipart_drawings_join_train(stamps: tuple[Path, str], cache: Path, tmp_path: Path) -> None:
    try:
        result = build_tuxpaint(tmp_path / "tux", limit=12, dev=3, test=3, with_openclipart=True, progress=False)
    except ItmatchError as exc:
        pytest.skip(f"openclipart-svg unavailable ({exc}); run scripts/install_system_deps.sh")
    info = json.loads((tmp_path / "tux" / "dataset.json").read_text())
    drawings = info["openclipart"]["drawings"]
    assert drawings + len(info["openclipart"]["unrenderable"]) == 12
    assert result.splits["train"]["images"] == 6 + drawings
    assert result.splits["test"]["images"] == 3  # drawings never enter dev/test
    train = load_split(tmp_path / "tux", "train")
    assert all(c.strip() for c in train.captions) and train.n_captions > train.n_images


@pytest.mark.slow
def test_full_build(stamps: tuple[Path, str], cache: Path, tmp_path: Path) -> None:
    result = build_tuxpaint(tmp_path / "tux", progress=False)
    n = 950 if stamps[1] == KNOWN_VERSION else result.splits["train"]["images"] + 250
    assert result.splits == {"train": {"images": n - 250, "captions": n - 250}, "dev": {"images": 100, "captions": 100},
                             "test": {"images": 150, "captions": 150}}
    for split in ("train", "dev", "test"):
        assert all(c.strip() for c in load_split(tmp_path / "tux", split).captions)
    started = time.perf_counter()
    assert build_tuxpaint(tmp_path / "tux", progress=False).computed == 0
    assert time.perf_counter() - started < 30
