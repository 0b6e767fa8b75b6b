"""Manifest datasets: validation reports every bad line, --skip-bad, nothing half-written, the precomp output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from itmatch.cli.build import app
from itmatch.data import load_split, load_vocab
from itmatch.data.sources.dataset import build_from_manifest, parse_fractions, split_sizes
from itmatch.data.sources.manifest import ManifestError, read_manifest
from itmatch.errors import ItmatchError
from itmatch.features import open_features

STAMPS = ["animals/birds/blackbird.png", "animals/birds/hen.png", "animals/amphibians/frog.png",
          "food/fruit/apple_fuji.png", "vehicles/emergency/firetruck.png", "animals/insects/bee.svg"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: six real pictures (one SVG, in a subfolder) and a file that is no picture."""
    from itmatch.data.sources.tuxpaint import stamps_folder

    try:
        stamps = stamps_folder()[0]
    except ItmatchError as exc:
        pytest.skip(f"Tux Paint stamps unavailable ({exc}); run scripts/install_system_deps.sh")
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for name in STAMPS:
        target = folder / ("sub" if name.endswith(".svg") else "") / Path(name).name
        target.write_bytes((stamps / name).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture()
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path_factory.getbasetemp() / "cache"  # shared by the tests of this run: features are reused
    monkeypatch.setenv("ITMATCH_CACHE", str(folder))
    return folder


GOOD = [
    {"image": "blackbird.png", "captions": ["A blackbird.", "a black bird with a yellow beak"]},
    {"image": "hen.png", "captions": ["A hen."]},
    {"image": "frog.png", "captions": ["A frog.", "a green frog", "a frog sitting"]},
    {"image": "apple_fuji.png", "captions": ["A Fuji apple."]},
    {"image": "firetruck.png", "captions": ["A fire truck.", "a red truck"]},
    {"image": "sub/bee.svg", "captions": ["A bee."]},
]


def write_jsonl(folder: Path, records: list[object], name: str = "manifest.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_every_kind_of_bad_line_in_one_report(photos: Path, tmp_path: Path, cache: Path) -> None:
    manifest = write_jsonl(photos, [
        GOOD[0],                                                     # 1 ok
        {"image": "missing.png", "captions": ["gone"]},              # 2 missing picture
        {"image": "broken.png", "captions": ["broken"]},             # 3 undecodable picture
        {"image": "hen.png", "captions": ["A hen.", "  "]},          # 4 empty caption
        GOOD[2],                                                     # 5 ok
        {"image": "blackbird.png", "captions": ["again"]},           # 6 picture listed twice
        '{"image": "frog.png", "captions": [',                       # 7 not JSON
        {"captions": ["no image"]},                                  # 8 no image path
        {"image": "apple_fuji.png", "captions": []},                 # 9 no captions
    ], name="bad.jsonl")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["manifest", "--manifest", str(manifest), "--out", str(out), "--no-progress"])
    assert result.exit_code != 0
    error = result.exception
    assert isinstance(error, ManifestError)
    assert [p.where for p in error.problems] == [f"{manifest}:{n}" for n in (2, 3, 4, 6, 7, 8, 9)]
    message = str(error)
    for expected in (":2: picture not found: missing.png", ":3: cannot decode the picture broken.png",
                     ":4: empty caption (caption 2 of 2)", ":6: picture already listed on line 1",
                     ":7: not valid JSON", ':8: no "image" path', ':9: no "captions"'):
        assert expected in message, expected
    assert "--skip-bad" in message
    # nothing written, no temporary folder left, nothing extracted
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert not (cache / "features").exists()


def test_csv_manifest_errors(photos: Path) -> None:
    manifest = photos / "bad.csv"
    manifest.write_text(
        "image,caption\n"
        "blackbird.png,A blackbird.\n"                   # 2 ok
        'blackbird.png,"a black bird, singing"\n'        # 3 ok: second caption, quoted comma
        "hen.png,\n"                                     # 4 empty caption
        "blackbird.png,A blackbird.\n"                   # 5 duplicate row
        "nothere.jpg,something\n"                        # 6 missing
        "frog.png,a frog,extra\n"                        # 7 three columns
    )
    read = read_manifest(manifest)
    assert [str(p).split(": ", 1)[0] for p in read.problems] == [f"{manifest}:{n}" for n in (4, 5, 6, 7)]
    assert "duplicate of line 2" in read.problems[1].reason
    assert [(i.image.name, i.captions) for i in read.items] == [
        ("blackbird.png", ("A blackbird.", "a black bird, singing"))]


def test_skip_bad_builds_the_rest(photos: Path, tmp_path: Path, cache: Path) -> None:
    manifest = write_jsonl(photos, [*GOOD[:4], {"image": "broken.png", "captions": ["broken"]},
                                    {"image": "frog.png", "captions": ["twice"]}], name="skip.jsonl")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["manifest", "--manifest", str(manifest), "--out", str(out), "--skip-bad",
                                      "--split", "0.5/0.25/0.25", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad lines" in result.output
    assert f"skipped {manifest}:5: cannot decode" in result.output
    info = json.loads((out / "dataset.json").read_text())
    assert len(info["skipped"]) == 2
    assert sum(s["images"] for s in info["splits"].values()) == 4


def test_build_writes_a_precomp_dataset(photos: Path, tmp_path: Path, cache: Path) -> None:
    manifest = write_jsonl(photos, GOOD)
    out = tmp_path / "data"
    feats = tmp_path / "feats"
    result = build_from_manifest(manifest, out, split="0.5/0.25/0.25", seed=3, features_dir=feats, progress=False)
    assert result.computed == 6
    assert {s: c["images"] for s, c in result.splits.items()} == {"train": 2, "dev": 2, "test": 2}
    features = open_features(feats)
    captions_by_image = {Path(g["image"]).name: g["captions"] for g in GOOD}
    seen = []
    for split in ("train", "dev", "test"):
        data = load_split(out, split)
        rows = [json.loads(line) for line in (out / f"{split}_images.jsonl").read_text().splitlines()]
        assert data.features.shape == (len(rows), 36, 1286)
        assert np.load(out / f"{split}_boxes.npy").shape == (len(rows), 36, 4)
        assert (out / f"{split}_cap2img.npy").is_file()
        for row in rows:
            name = Path(row["path"]).name
            seen.append(name)
            caps = [c for c, i in zip(data.captions, data.caption_image) if i == row["row"]]
            assert caps == captions_by_image[name]
            np.testing.assert_array_equal(data.features[row["row"]], features.features[features.paths.index(
                Path(row["path"]).resolve())])
    assert sorted(seen) == sorted(captions_by_image)
    vocab = load_vocab(out / "vocab.json")
    train_words = " ".join(load_split(out, "train").captions).lower()
    assert all(w in vocab for w in ("a", ".")) and ("bee" in vocab) == ("bee" in train_words)

    # another split of the same pictures: features come from the cache; the old build is replaced whole
    again = build_from_manifest(manifest, out, split="0.5/0.25/0.25", seed=4, features_dir=feats, progress=False)
    assert again.computed == 0
    assert not list(tmp_path.glob(".data*"))
    assert [load_split(out, s).n_images for s in ("train", "dev", "test")] == [2, 2, 2]


def test_out_must_be_new_empty_or_a_dataset(photos: Path, tmp_path: Path, cache: Path) -> None:
    manifest = write_jsonl(photos, GOOD)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(ItmatchError, match=r"precious: holds files itmatch did not write \(e.g. thesis.tex\)"):
        build_from_manifest(manifest, precious, progress=False)
    assert (precious / "thesis.tex").read_text() == "..."
    (precious / "dataset.json").write_text('{"splits": {}, "extractor": {}}')  # a dataset.json is no licence
    with pytest.raises(ItmatchError, match=r"\(e.g. thesis.tex and 1 more\)"):
        build_from_manifest(manifest, precious, progress=False)
    assert sorted(p.name for p in precious.iterdir()) == ["dataset.json", "thesis.tex"]


def test_split_arithmetic() -> None:
    assert parse_fractions("80/10/10") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(ItmatchError, match="--split"):
        parse_fractions("0.8/0.2")
    assert split_sizes(1000, (0.8, 0.1, 0.1)) == (100, 100)
    assert split_sizes(5, (0.8, 0.1, 0.1)) == (1, 1)  # small data still gets a dev and a test picture
    assert split_sizes(5, (0.9, 0.1, 0.0)) == (1, 0)
