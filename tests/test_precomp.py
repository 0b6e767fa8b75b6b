"""The precomp reader and writer: the three caption layouts, the dev subset, memory-mapping and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from itmatch.data.precomp import load_split, read_captions, write_split
from itmatch.errors import ItmatchError


def features(n: int, regions: int = 3, dim: int = 4) -> np.ndarray:
    """Row i is filled with the value i, so gathered rows reveal which image they came from."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, regions, dim)).copy()


def captions(n: int) -> list[str]:
    return [f"caption {i}" for i in range(n)]


def write_raw(directory: Path, split: str, ims: np.ndarray, caps: list[str], cap2img: np.ndarray | None = None) -> None:
    """Write files directly (bypassing write_split's checks) to test the reader on bad data."""
    np.save(directory / f"{split}_ims.npy", ims)
    (directory / f"{split}_caps.txt").write_text("".join(c + "\n" for c in caps), encoding="utf-8")
    if cap2img is not None:
        np.save(directory / f"{split}_cap2img.npy", cap2img)


def test_one_row_per_image(tmp_path: Path) -> None:
    write_split(tmp_path, "test", features(3), captions(15))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_caps.txt", "test_ims.npy"]
    split = load_split(tmp_path, "test")
    assert (split.n_images, split.n_captions, split.n_regions, split.feature_dim) == (3, 15, 3, 4)
    np.testing.assert_array_equal(split.caption_image, [0] * 5 + [1] * 5 + [2] * 5)
    np.testing.assert_array_equal(split.image_rows, [0, 1, 2])
    assert split.captions == captions(15)
    assert isinstance(split.features, np.memmap)
    assert split.caption_image.dtype == np.int64 and split.image_rows.dtype == np.int64


def test_repeated_images(tmp_path: Path) -> None:
    write_split(tmp_path, "train", np.repeat(features(2), 5, axis=0), captions(10))
    split = load_split(tmp_path, "train")
    assert split.n_images == 2
    np.testing.assert_array_equal(split.image_rows, [0, 5])
    np.testing.assert_array_equal(split.caption_image, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(split.image_features(np.array([1, 0]))[:, 0, 0], [1.0, 0.0])


def test_cap2img_any_number_of_captions(tmp_path: Path) -> None:
    cap2img = np.array([0, 0, 1, 2, 2, 2])
    write_split(tmp_path, "dev", features(3), captions(6), cap2img)
    assert (tmp_path / "dev_cap2img.npy").is_file()
    split = load_split(tmp_path, "dev")
    np.testing.assert_array_equal(split.caption_image, cap2img)
    np.testing.assert_array_equal(split.image_rows, [0, 1, 2])


def test_one_caption_per_image_needs_cap2img(tmp_path: Path) -> None:
    # 5 rows and 5 captions would read as "each image repeated 5 times" without cap2img.
    write_split(tmp_path, "dev", features(5), captions(5), np.arange(5))
    np.testing.assert_array_equal(load_split(tmp_path, "dev").caption_image, [0, 1, 2, 3, 4])


def test_plain_layout_removes_stale_cap2img(tmp_path: Path) -> None:
    write_split(tmp_path, "dev", features(2), captions(3), np.array([0, 0, 1]))
    write_split(tmp_path, "dev", features(2), captions(10), np.repeat(np.arange(2), 5))
    assert not (tmp_path / "dev_cap2img.npy").exists()
    assert load_split(tmp_path, "dev").n_captions == 10


def test_image_features_gathers_in_any_order(tmp_path: Path) -> None:
    write_split(tmp_path, "test", features(6, regions=2, dim=3), captions(30))
    out = load_split(tmp_path, "test").image_features(np.array([4, 1, 4, 0]))
    assert out.shape == (4, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 1, 2], [4, 1, 4, 0])


def test_dev_subset(tmp_path: Path) -> None:
    write_split(tmp_path, "dev", features(1002, regions=1, dim=1), captions(5010))
    split = load_split(tmp_path, "dev", dev_subset=True)
    assert (split.n_images, split.n_captions) == (1000, 5000)
    assert split.captions[-1] == "caption 4999"
    assert split.caption_image[-1] == 999
    assert load_split(tmp_path, "dev").n_images == 1002
    with pytest.raises(ItmatchError, match="dev split only"):
        load_split(tmp_path, "test", dev_subset=True)


def test_crlf_and_unicode_captions(tmp_path: Path) -> None:
    path = tmp_path / "caps.txt"
    path.write_bytes("un café\r\nA dog .\r\n".encode())
    assert read_captions(path) == ["un café", "A dog ."]


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ItmatchError, match="unknown split 'val'"):
        load_split(tmp_path, "val")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ItmatchError, match=r"test_ims\.npy: file not found.*test_caps\.txt"):
        load_split(tmp_path, "test")
    np.save(tmp_path / "test_ims.npy", features(1))
    with pytest.raises(ItmatchError, match=r"test_caps\.txt: file not found"):
        load_split(tmp_path, "test")


@pytest.mark.parametrize(
    ("ims", "caps", "cap2img", "message"),
    [
        (np.zeros((2, 4), np.float32), captions(10), None, r"test_ims\.npy: features have shape \(2, 4\)"),
        (np.zeros((2, 3, 4), np.int64), captions(10), None, r"test_ims\.npy: features have dtype int64"),
        (features(2), captions(7), None, r"test_ims\.npy has 2 images but .*test_caps\.txt has 7 captions"),
        (features(5), captions(5), None, r"rows 0-4 differ"),
        (features(2), captions(3), np.array([0, 1]), r"test_cap2img\.npy: has 2 entries but there are 3 captions"),
        (features(2), captions(3), np.array([0, 1, 2]), r"image rows must lie in 0\.\.1"),
        (features(2), captions(3), np.array([0, 1, 0]), r"grouped by image in image order; caption 2 goes back"),
        (features(3), captions(3), np.array([0, 0, 2]), r"image row 1 has no caption"),
        (features(2), captions(3), np.array([0.0, 1.0, 1.0]), r"test_cap2img\.npy: shape \(3,\) dtype float64"),
    ],
)
def test_bad_data(tmp_path: Path, ims: np.ndarray, caps: list[str], cap2img: np.ndarray | None, message: str) -> None:
    write_raw(tmp_path, "test", ims, caps, cap2img)
    with pytest.raises(ItmatchError, match=message) as info:
        load_split(tmp_path, "test")
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_empty_caption_names_file_and_line(tmp_path: Path) -> None:
    write_raw(tmp_path, "test", features(1), ["a", "b", "  ", "d", "e"])
    with pytest.raises(ItmatchError, match=r"test_caps\.txt:3: empty caption"):
        load_split(tmp_path, "test")


@pytest.mark.parametrize("kind", ["text", "npz"])
def test_not_npy(tmp_path: Path, kind: str) -> None:
    if kind == "text":
        (tmp_path / "test_ims.npy").write_text("hello")
    else:
        with open(tmp_path / "test_ims.npy", "wb") as f:
            np.savez(f, features=features(1))
    (tmp_path / "test_caps.txt").write_text("a\n")
    with pytest.raises(ItmatchError, match=r"test_ims\.npy: not a readable \.npy array"):
        load_split(tmp_path, "test")


def test_writer_checks_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ItmatchError, match="has 2 images but .* has 3 captions"):
        write_split(tmp_path, "train", features(2), captions(3))
    with pytest.raises(ItmatchError, match="caption 2 is empty or spans lines"):
        write_split(tmp_path, "train", features(1), ["a", "b\nc", "d", "e", "f"])
    with pytest.raises(ItmatchError, match="expected \\(images, regions, dim\\)"):
        write_split(tmp_path, "train", np.zeros((5, 2)), captions(25))
    assert list(tmp_path.iterdir()) == []
