"""No command deletes or overwrites a user's files: output folders are replaced only when itmatch provably wrote
them (the marker), killed runs' temporary folders are removed by the next run, and `index add` does not add a
picture twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from local_server import free_port
from search_support import (picture_dataset, picture_index, picture_models, save_models, synthetic_data,
                            wait_until_serving)
from itmatch.cli import main
from itmatch.errors import ItmatchError, stopped
from itmatch.features import extract_features
from itmatch.fileio import MARKER, atomic_dir, new_npy, read_marker
from itmatch.search import Searcher, add_to_index, build_index, open_index


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    data = synthetic_data()
    return data, save_models(tmp_path_factory.mktemp("models"), data / "vocab.json", img_dim=24, names=("vse",))


def build_argv(data: Path, models: dict[str, Path], out: Path) -> list[str]:
    return ["index", "build", "--features", str(data), "--split", "test", "--embedder", str(models["vse"]),
            "--out", str(out), "--no-progress"]


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_index_build_never_replaces_a_folder_it_did_not_write(synthetic, tmp_path, capsys):
    data, models = synthetic
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.json").write_text('{"format": "itmatch-index", "segments": [], "faiss": {}}')
    (mine / "thesis.tex").write_text("three years of work")
    before = listing(mine)
    assert main(build_argv(data, models, mine)) == 2
    err = capsys.readouterr().err
    assert f"{mine}: holds files itmatch did not write (e.g. thesis.tex and 1 more); give --out" in err
    assert err.count("\n") == 1
    assert listing(mine) == before and not list(tmp_path.glob(".mine*"))


def test_data_build_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    pictures = sorted((picture_dataset().parent / "png").glob("*.png"))
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(p), "captions": [p.stem.replace("_", " ")]}) + "\n"
                                for p in pictures))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "dataset.json").write_text(json.dumps({"splits": {}, "extractor": {}}))
    (mine / "thesis.tex").write_text("three years of work")
    before = listing(mine)
    assert main(["data", "build", "manifest", "--manifest", str(manifest), "--out", str(mine), "--no-progress"]) == 2
    assert f"{mine}: holds files itmatch did not write (e.g. thesis.tex and 1 more)" in capsys.readouterr().err
    assert listing(mine) == before


def test_a_rebuild_replaces_its_own_index_until_a_user_file_appears(synthetic, tmp_path, capsys):
    data, models = synthetic
    out = tmp_path / "index"
    assert main(build_argv(data, models, out)) == 0
    marker = read_marker(out)
    assert marker["format"] == "itmatch-index" and "index.json" in marker["files"]
    assert set(marker["files"]) == set(listing(out)) - {MARKER}
    assert main(build_argv(data, models, out)) == 0  # its own folder: replaced
    (out / "seg-00000" / "my-notes.txt").write_text("keep me")
    assert main(build_argv(data, models, out)) == 2
    assert "(e.g. seg-00000/my-notes.txt)" in capsys.readouterr().err
    assert (out / "seg-00000" / "my-notes.txt").read_text() == "keep me"


def test_an_index_of_the_previous_version_is_recognised_by_its_names_only(synthetic, tmp_path, capsys):
    data, models = synthetic
    out = tmp_path / "index"
    build_index(data, out, split="test", embedder=models["vse"])
    (out / MARKER).unlink()  # as the previous version wrote it
    build_index(data, out, split="test", embedder=models["vse"])
    (out / MARKER).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ItmatchError, match=r"index: holds files itmatch did not write \(e.g. notes.txt and"):
        build_index(data, out, split="test", embedder=models["vse"])
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.json").is_file()
    (out / "notes.txt").unlink()
    for inside in ("models/NOTES.txt", "seg-00000/mine.csv"):  # in one of itmatch's subfolders: still the user's
        (out / inside).write_text("mine")
        with pytest.raises(ItmatchError, match=f"holds files itmatch did not write \\(e.g. {inside} and"):
            build_index(data, out, split="test", embedder=models["vse"])
        assert (out / inside).read_text() == "mine"
        (out / inside).unlink()
    build_index(data, out, split="test", embedder=models["vse"])  # the names alone: recognised, replaced


def test_a_users_file_in_a_subfolder_of_an_older_dataset_is_never_taken_for_itmatchs(tmp_path, capsys):
    """Names are matched part by part: ``*_caps.txt`` is a dataset's file, ``backup/train_caps.txt`` is not."""
    old = tmp_path / "old"
    (old / "backup").mkdir(parents=True)
    (old / "train_caps.txt").write_text("a dog\n")
    (old / "dataset.json").write_text('{"splits": {}, "extractor": {}}')
    (old / "backup" / "train_caps.txt").write_text("my earlier captions\n")
    assert main(["data", "synth", "--out", str(old), "--images", "4", "--dim", "8"]) == 2
    assert "(e.g. backup/train_caps.txt and" in capsys.readouterr().err
    assert (old / "backup" / "train_caps.txt").read_text() == "my earlier captions\n"
    (old / "backup" / "train_caps.txt").unlink()
    (old / "backup").rmdir()
    assert main(["data", "synth", "--out", str(old), "--images", "4", "--dim", "8"]) == 0  # its own names: replaced


def test_a_folder_lock_names_no_option_for_a_cache_and_a_file_system_without_locks_writes_unlocked(tmp_path,
                                                                                                monkeypatch):
    import errno
    import fcntl

    from itmatch.fileio import folder_lock

    with folder_lock(tmp_path):
        with pytest.raises(ItmatchError, match=r"writing this folder now; wait until it ends$"):
            with folder_lock(tmp_path, None):
                pass

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock(tmp_path):
        (tmp_path / "written").write_text("unlocked")
    assert (tmp_path / "written").read_text() == "unlocked"


def killed_while_writing(path: Path) -> Path:
    """The temporary folder a process killed (SIGKILL) while writing ``path`` with ``atomic_dir`` left behind."""
    script = ("import os, signal, sys; from itmatch.fileio import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    (tmp / 'features.npy').write_bytes(bytes(1 << 20))\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -9
    left = list(path.parent.glob(f".{path.name}.*.tmp"))
    assert len(left) == 1 and (left[0] / "features.npy").stat().st_size == 1 << 20
    return left[0]


def test_a_killed_build_leaves_a_temporary_folder_that_the_next_build_removes(synthetic, tmp_path):
    data, models = synthetic
    out = tmp_path / "index"
    killed_while_writing(out)
    build_index(data, out, split="test", embedder=models["vse"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_a_killed_add_leaves_a_segment_that_the_next_add_removes(synthetic, tmp_path):
    data, models = synthetic
    out = tmp_path / "index"
    build_index(data, out, split="test", embedder=models["vse"])
    stale = killed_while_writing(out / "seg-00001")
    users = out / f".notes.{dead_pid()}.abcd1234.tmp"  # looks temporary, but is not itmatch's
    users.write_text("mine")
    with atomic_dir(out / "seg-00009") as alive:  # a running process's: left alone
        add_to_index(out, data, split="dev")
        assert not stale.exists() and alive.is_dir() and users.read_text() == "mine"


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_index_add_skips_pictures_already_in_the_index(tmp_path, capsys):
    data = picture_dataset()
    models = picture_models()
    features = data.parent / "features"  # the same 10 pictures as the dataset's test split
    out = tmp_path / "index"
    build_index(features, out, embedder=models["vse"])
    meta = add_to_index(out, features)
    assert (meta["n_images"], len(meta["segments"]), meta["skipped"]) == (10, 1, 10)
    paths = sorted(p["path"] for p in open_index(out).pictures)
    # three of the same pictures and two new ones: only the new ones are added
    pictures = sorted((data.parent / "png").glob("*.png"))
    new = []
    for k in range(2):
        new.append(tmp_path / f"new_{k}.png")
        shutil.copyfile(pictures[k], new[-1])
    more = extract_features(pictures[:3] + new, tmp_path / "more", progress=False)
    assert main(["index", "add", "--index", str(out), "--features", str(more.directory), "--no-progress"]) == 0
    assert "12 pictures, 0 captions in 2 segments; skipped 3 pictures already in it" in capsys.readouterr().out
    index = open_index(out)
    assert sorted(p["path"] for p in index.pictures) == sorted(paths + [str(p.resolve()) for p in new])
    np.testing.assert_array_equal(index.features(np.array([10, 11])), np.asarray(more.features[3:5]))
    hits = Searcher(out).search_text("a red circle", top=12, shortlist=12).hits
    assert len(hits) == 12 and len({h["path"] for h in hits}) == 12  # each picture once
    claims = read_marker(out)["files"]
    assert "seg-00001" not in claims and "seg-00001/features.npy" in claims  # its files, not its whole folder
    (out / "seg-00001" / "README.txt").write_text("mine")
    with pytest.raises(ItmatchError, match=r"holds files itmatch did not write \(e.g. seg-00001/README.txt\)"):
        build_index(features, out, embedder=models["vse"])
    assert (out / "seg-00001" / "README.txt").read_text() == "mine"


def test_a_features_folder_of_the_previous_version_is_reused(tmp_path):
    pictures = sorted((picture_dataset().parent / "png").glob("*.png"))[:2]
    out = tmp_path / "features"
    extract_features(pictures, out, progress=False)
    (out / MARKER).unlink()  # as the previous version wrote it
    again = extract_features(pictures, out, progress=False)
    assert again.computed == 0 and read_marker(out)["format"] == "itmatch-features"


def test_extract_and_encode_refuse_folders_holding_other_files(tmp_path, capsys):
    data = picture_dataset()
    pictures = sorted((data.parent / "png").glob("*.png"))[:2]
    out = tmp_path / "features"
    out.mkdir()
    (out / "features.npy").write_bytes(b"my own array")
    (out / "extractor.json").write_text(json.dumps({"extractor": {}, "count": 1}))
    (out / "README").write_text("mine")
    with pytest.raises(ItmatchError, match=r"features: holds files itmatch did not write \(e.g. README and 2 more\)"):
        extract_features(pictures, out, progress=False)
    assert (out / "features.npy").read_bytes() == b"my own array"
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    (embeddings / "images.npy").write_bytes(b"mine")
    assert main(["encode", "--checkpoint", str(picture_models()["vse"]), "--data", str(data), "--split", "test",
                 "--out", str(embeddings)]) == 2
    assert "embeddings: holds files itmatch did not write (e.g. images.npy)" in capsys.readouterr().err
    assert (embeddings / "images.npy").read_bytes() == b"mine"


def test_a_failed_encode_leaves_the_earlier_embeddings_as_they_were(synthetic, tmp_path, monkeypatch):
    import itmatch.scoring
    from itmatch.embeddings import encode_split

    out = tmp_path / "embeddings"
    encode_split(synthetic[1]["vse"], synthetic[0], "test", out)  # then another model on other data:
    before = listing(out)
    data, vse = picture_dataset(), picture_models()["vse"]

    def broken(*args, **kwargs):  # the captions fail after the images were encoded (a kill, a full disk, ...)
        raise OSError("no space left on device")
        yield

    monkeypatch.setattr(itmatch.scoring, "text_batches", broken)
    with pytest.raises(OSError, match="no space left"):
        encode_split(vse, data, "test", out)
    assert listing(out) == before and not list(tmp_path.glob(".embeddings*"))


def test_outputs_that_are_inputs_or_folders_are_refused_before_any_work(tmp_path, capsys):
    data, models = picture_dataset(), picture_models()
    victim = tmp_path / "sgr.safetensors"
    shutil.copy(models["sgr"], victim)
    kept = victim.read_bytes()
    evaluate = ["evaluate", "--data", str(data), "--checkpoint", str(victim), "--no-progress"]
    assert main([*evaluate, "--output", str(victim)]) == 2
    assert f"{victim}: is also --checkpoint; give --output another file" in capsys.readouterr().err
    assert main([*evaluate, "--output", str(tmp_path / "r.json"), "--save-sims", str(tmp_path / "r.json")]) == 2
    assert "r.json: is also --output; give --save-sims another file" in capsys.readouterr().err
    assert main([*evaluate, "--output", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; give --output a file name" in capsys.readouterr().err
    assert main(["explain", "--model", str(victim), "--features", str(data), "--split", "test", "--image", "0",
                 "--text", "a red circle", "--out", str(victim)]) == 2
    assert f"{victim}: is also --model; give --out another file" in capsys.readouterr().err
    captions = tmp_path / "caps.txt"
    captions.write_text("a red circle\n")
    assert main(["data", "vocab", "--captions", str(captions), "--out", str(captions)]) == 2
    assert "caps.txt: is also --captions; give --out another file" in capsys.readouterr().err
    assert victim.read_bytes() == kept and captions.read_text() == "a red circle\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.txt", "sgr.safetensors"]


def test_single_file_outputs_never_replace_a_file_of_an_itmatch_folder(synthetic, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic[0], data)  # `data synth`'s folder, with its marker
    download = tmp_path / "precomp"
    shutil.copytree(picture_dataset(), download)  # a precomp folder without a marker (a download)
    (download / "train_caps.txt").write_text("a red circle\n")
    features = tmp_path / "features"
    shutil.copytree(picture_dataset().parent / "features", features)
    picture = tmp_path / "mine.png"
    shutil.copy(sorted((picture_dataset().parent / "png").glob("*.png"))[0], picture)
    extract_features([picture], tmp_path / "mine", progress=False)
    before = {folder: listing(folder) for folder in (data, download, features, tmp_path / "mine")}
    kept = picture.read_bytes()
    captions = tmp_path / "caps.txt"
    captions.write_text("a red circle\n")
    assert main(["data", "vocab", "--captions", str(captions), "--out", str(data / "vocab.json")]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'vocab.json'}: is one of the files of {data}, an itmatch-dataset folder; give --out another " \
           "file name" in err and err.count("\n") == 1
    evaluate = ["evaluate", "--checkpoint", str(picture_models()["sgr"]), "--no-progress"]
    assert main([*evaluate, "--data", str(data), "--split", "test", "--output", str(data / "dev_ims.npy")]) == 2
    assert "dev_ims.npy: is one of the files of" in capsys.readouterr().err
    assert main([*evaluate, "--data", str(download), "--output", str(download / "train_caps.txt")]) == 2
    assert "train_caps.txt: is also --data; give --output another file" in capsys.readouterr().err
    assert main(["data", "vocab", "--captions", str(download / "train_caps.txt"), "--out",
                 str(download / "test_caps.txt")]) == 2
    assert "test_caps.txt: is also a file of the captions' dataset; give --out" in capsys.readouterr().err
    explain = ["explain", "--model", str(picture_models()["sgr"]), "--features", str(features), "--image", "0",
               "--text", "a red circle"]
    assert main([*explain, "--out", str(tmp_path / "x.png"), "--json", str(features / "images.jsonl")]) == 2
    assert f"is one of the files of {features}, an itmatch-features folder; give --json" in capsys.readouterr().err
    assert main([*explain, "--out", str(features / MARKER)]) == 2  # the marker itself
    assert "an itmatch-features folder; give --out another file name" in capsys.readouterr().err
    mine = [*explain[:4], str(tmp_path / "mine"), *explain[5:]]
    assert main([*mine, "--out", str(picture)]) == 2  # the picture explained: drawn from, never over
    assert f"{picture}: is also the picture; give --out another file" in capsys.readouterr().err
    assert {folder: listing(folder) for folder in before} == before and picture.read_bytes() == kept
    assert main([*mine, "--out", str(tmp_path / "mine" / "explained.png")]) == 0  # a new file beside them is fine
    assert main(["data", "vocab", "--captions", str(download / "train_caps.txt"), "--threshold", "1", "--out",
                 str(download / "vocab_new.json")]) == 0


def test_saved_score_folds_are_never_written_over_the_matrices_read(tmp_path, capsys):
    from itmatch.evaluate import fold_path

    rng = np.random.default_rng(0)
    for stem in ("sgr", "saf"):
        for k in range(5):
            np.save(fold_path(tmp_path / stem, k), rng.random((1000, 5000), dtype=np.float32))
    before = listing(tmp_path)
    evaluate = ["evaluate", "--sims", str(tmp_path / "sgr"), "--sims", str(tmp_path / "saf"), "--protocol", "coco1k"]
    assert main([*evaluate, "--save-sims", str(tmp_path / "sgr.npy")]) == 2  # sgr.npy's folds are sgr.fold*.npy
    assert f"{fold_path(tmp_path / 'sgr', 0)}: is also --sims; give --save-sims (fold 0) another file" in \
        capsys.readouterr().err
    assert main([*evaluate, "--save-sims", str(tmp_path / "both"), "--output", str(tmp_path / "both.fold2.npy")]) == 2
    assert "both.fold2.npy: is also --output; give --save-sims (fold 2) another file" in capsys.readouterr().err
    assert listing(tmp_path) == before


def test_a_failed_save_of_fold_scores_keeps_the_earlier_set_whole(tmp_path, monkeypatch):
    from itmatch import evaluate

    earlier = [np.full((2, 3), k, dtype=np.float32) for k in range(5)]
    evaluate.save_sims(tmp_path / "sims", earlier)
    before = listing(tmp_path)
    real_save, calls = np.save, []

    def failing_save(file, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError):
        evaluate.save_sims(tmp_path / "sims", [array + 10 for array in earlier])
    assert listing(tmp_path) == before and len(calls) == 4  # no fold replaced, no temporary file left


def test_fold_scores_mixed_by_a_stopped_save_are_refused(tmp_path, monkeypatch):
    """A save stopped between two of its renames leaves folds of two sets: reading them is refused, not averaged."""
    from itmatch import evaluate, fileio

    blocks = [(np.arange(2), np.arange(3))] * 5
    earlier = [np.full((2, 3), k, dtype=np.float32) for k in range(5)]
    evaluate.save_sims(tmp_path / "sims", earlier)
    read = evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)
    assert [part.tolist() for part in read] == [part.tolist() for part in earlier]
    real_replace, calls = os.replace, []

    def stopped_replace(source, target):
        calls.append(Path(target).name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", stopped_replace)
    with pytest.raises(KeyboardInterrupt):
        evaluate.save_sims(tmp_path / "sims", [part + 10 for part in earlier])
    monkeypatch.undo()
    assert calls == ["sims.folds.json", "sims.fold4.npy", "sims.fold3.npy", "sims.fold2.npy"]
    assert [float(np.load(evaluate.fold_path(tmp_path / "sims", k))[0, 0]) for k in range(5)] == [0, 1, 2, 13, 14]
    with pytest.raises(ItmatchError, match=r"sims\.fold0\.npy: not the fold file that sims\.folds\.json lists"):
        evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    evaluate.save_sims(tmp_path / "sims", [part + 20 for part in earlier])  # saved again: whole
    assert float(evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)[4][0, 0]) == 24
    np.save(evaluate.fold_path(tmp_path / "sims", 1), earlier[1])  # one file replaced by hand
    with pytest.raises(ItmatchError, match=r"sims\.fold1\.npy: not the fold file"):
        evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)
    evaluate.fold_set_path(tmp_path / "sims").write_text("{")
    with pytest.raises(ItmatchError, match=r"sims\.folds\.json: not a fold list written by --save-sims"):
        evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)
    evaluate.fold_set_path(tmp_path / "sims").unlink()  # without the list, the files are read as they are
    as_they_are = evaluate.load_sims([tmp_path / "sims"], blocks, 10, 15)
    assert [float(part[0, 0]) for part in as_they_are] == [20, 1, 22, 23, 24]


def test_result_and_fold_file_names_keep_models_and_ensembles_apart(tmp_path):
    from itmatch.cli.models import default_output
    from itmatch.evaluate import fold_path

    one, two = tmp_path / "vse.v1.pt", tmp_path / "vse.v2.pt"
    assert default_output([one], "test", None).name == "vse.v1.test.full.json"
    assert default_output([two], "test", None).name == "vse.v2.test.full.json"
    assert default_output([tmp_path / "SGR" / "model_best.pth.tar"], "test", "f30k").name == "model_best.test.f30k.json"
    ensembles = {default_output([one, other], "testall", "coco1k") for other in (two, tmp_path / "hrem.pt")}
    assert len(ensembles) == 2 and all(p.name.startswith("vse.v1.ensemble-") for p in ensembles)
    assert fold_path(tmp_path / "sgr_coco.npy", 3) == tmp_path / "sgr_coco.fold3.npy"
    assert fold_path(tmp_path / "sims.sgr", 0) != fold_path(tmp_path / "sims.saf", 0)


def test_a_link_to_an_index_is_rebuilt_through(synthetic, tmp_path):
    data, models = synthetic
    real, link = tmp_path / "real", tmp_path / "index"
    assert main(build_argv(data, models, real)) == 0
    link.symlink_to(real, target_is_directory=True)
    assert main(build_argv(data, models, link)) == 0
    assert link.is_symlink() and link.resolve() == real.resolve() and (real / "index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "real"]


def test_a_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    from itmatch.fileio import _HOST, remove_stale

    pid = dead_pid()
    aside = tmp_path / f".index.itmatch-old-{_HOST}-{pid}"  # moved aside; killed before the new one moved in
    aside.mkdir()
    (aside / "index.json").write_text("{}")
    remove_stale(tmp_path)
    assert (tmp_path / "index" / "index.json").read_text() == "{}" and not aside.exists()
    aside.mkdir()  # the same with the new folder in place: the old one is only a leftover
    remove_stale(tmp_path)
    assert not aside.exists() and (tmp_path / "index" / "index.json").exists()


def test_a_full_disk_stops_a_memory_mapped_writer_with_one_line(tmp_path, monkeypatch, capsys):
    """Space for a memory-mapped output is taken when it is made: a full disk is an error there, not a SIGBUS
    (exit 135, no message) at the first write through the map that meets no space."""
    array = new_npy(tmp_path / "a.npy", np.float32, (64, 1024))
    assert os.stat(tmp_path / "a.npy").st_blocks * 512 >= array.nbytes  # reserved, not a sparse file
    del array

    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--images", "20", "--dim", "16"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out / 'train_ims.npy'}: No space left on device; free some disk space or write " \
                  "elsewhere\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_the_folder_a_command_runs_in_is_never_replaced_under_it(tmp_path, monkeypatch, capsys):
    inside = tmp_path / "data"
    inside.mkdir()
    monkeypatch.chdir(inside)
    for out in (".", str(inside), ".."):
        assert main(["data", "synth", "--out", out, "--images", "20", "--dim", "16"]) == 2
        assert "is the folder you are in (or holds it), which would be replaced under you; give --out another " \
               "folder" in capsys.readouterr().err
    assert list(inside.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["data"]
    assert main(["data", "synth", "--out", "./out", "--images", "20", "--dim", "16"]) == 0


def interruptible(*args: str, stdout: int = subprocess.DEVNULL, new_session: bool = False) -> subprocess.Popen:
    """``python -m itmatch ARGS`` with its stderr piped and Ctrl-C's default action (a process started in the
    background of a non-interactive shell ignores SIGINT); with ``new_session``, in a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "itmatch", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=new_session,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two worker processes need two cores")


@contextlib.contextmanager
def running_server(*options: str, index: Path | None = None, wait: bool = True
                   ) -> Iterator[tuple[subprocess.Popen, str]]:
    """`itmatch serve` of ``index`` (the test pictures' by default) with ``options`` in a session of its own (with
    Ctrl-C's default action), once it says it serves and answers, unless not ``wait``: the process and its base URL.
    Its whole process group is killed at the end, so that no server outlives a failed test."""
    port = free_port()
    process = interruptible("serve", "--index", str(index or picture_index()), "--port", str(port), *options,
                            stdout=subprocess.PIPE, new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # "serving ..." comes once every worker has its app; then one (at least) listens
        if wait:
            assert process.stdout.readline().startswith("serving "), process.stderr.read()
            wait_until_serving(base, process, lambda: (process.kill(), process.communicate()[1])[1])
        yield process, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def worker_pids(process: subprocess.Popen) -> list[int]:
    """The worker processes of a service (its spawned children, not Python's resource tracker), once there are
    two."""
    deadline = time.monotonic() + 60
    while True:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        workers = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        if len(workers) == 2:
            return workers
        assert time.monotonic() < deadline, children
        time.sleep(0.05)


def ended(pids: list[int], seconds: float = 30) -> bool:
    """Whether all of ``pids`` end within ``seconds`` (a zombie counts as ended)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.1)


def stop_quietly(process: subprocess.Popen, signal_number: int) -> None:
    """Stop a server with ``signal_number``: it must exit 0, without the writers' stop line or a traceback."""
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopped by" not in err and "Traceback" not in err and "Error" not in err, err


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_ends_quietly(signal_number):
    """`itmatch serve` stopped by `kill` or Ctrl-C shuts down and exits 0, without the writers' stop line (it has
    no output to speak of)."""
    with running_server("--threads", "1") as (process, _):
        stop_quietly(process, signal_number)


@TWO_CORES
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_worker_processes_answer_as_one_searcher_and_stop_with_the_service(signal_number):
    """`serve --workers 2`: two processes on one port answer like the in-process searcher, and stopping the
    service stops them."""
    with running_server("--workers", "2", "--threads", "1") as (process, base):
        workers = worker_pids(process)
        expected = Searcher(picture_index()).search_text("a red circle", top=3)
        for _ in range(6):  # over new connections: the kernel spreads them over both workers
            with urllib.request.urlopen(f"{base}/search?q=a%20red%20circle&top=3", timeout=30) as answer:
                results = json.loads(answer.read())["results"]
            assert [hit["image"] for hit in results] == [hit["image"] for hit in expected.hits]
            np.testing.assert_allclose([hit["score"] for hit in results], [hit["score"] for hit in expected.hits],
                                       rtol=0, atol=1e-6)
        stop_quietly(process, signal_number)
        assert ended(workers, seconds=0)


@TWO_CORES
def test_a_worker_that_dies_stops_the_service_with_one_line():
    with running_server("--workers", "2", "--threads", "1") as (process, _):
        workers = worker_pids(process)
        os.kill(workers[1], signal.SIGKILL)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 2
        assert err.strip().splitlines() == [
            "error: a worker process of the service ended (exit code -9); stopped the others"]
        assert ended(workers, seconds=0)


@TWO_CORES
def test_no_worker_outlives_the_service():
    """Killed outright (SIGKILL: no chance to stop its workers), the service's workers end too."""
    with running_server("--workers", "2", "--threads", "1") as (process, _):
        workers = worker_pids(process)
        process.kill()
        process.communicate(timeout=60)
        assert ended(workers)


@TWO_CORES
def test_a_worker_that_cannot_start_is_one_line(tmp_path):
    """A model file that is not a checkpoint: the service stops with the workers' one-line error, nothing served."""
    index = tmp_path / "index"
    shutil.copytree(picture_index(), index)
    damaged = sorted(index.rglob("*.safetensors"))[-1]
    damaged.write_bytes(b"not a checkpoint" * 10)
    with running_server("--workers", "2", "--threads", "1", index=index, wait=False) as (process, _):
        out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and out == "", (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "not a checkpoint" in err, err


@TWO_CORES
def test_ctrl_c_while_the_workers_start_is_quiet():
    """Ctrl-C (SIGINT to the whole process group) while the workers import their libraries: no traceback."""
    with running_server("--workers", "2", "--threads", "1", wait=False) as (process, _):
        workers = worker_pids(process)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0 and "Traceback" not in err and "Error" not in err, err
        assert ended(workers, seconds=0)


@TWO_CORES
@pytest.mark.parametrize("reuse_port", [False, True])
def test_worker_processes_on_a_port_in_use_are_one_line(capsys, reuse_port):
    """Taken by any server, also by another service's workers (which bind with SO_REUSEPORT and would otherwise
    share the port with this one)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--index", str(picture_index()), "--port", str(port), "--workers", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and not out and err.count("\n") == 1, (out, err)
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use; give another --port" in err


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_no_temporary_files_and_one_line(tmp_path, signal_number):
    """`kill` (SIGTERM) stops a command like Ctrl-C does: its writers remove what they had begun, and it says so
    in one line."""
    out = tmp_path / "synth"
    process = interruptible("data", "synth", "--out", str(out), "--images", "3000", "--dim", "256")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".synth.*")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal_number)
    assert process.wait(timeout=60) == 128 + signal_number
    name = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}[signal_number]
    assert process.stderr.read().splitlines() == [
        f"stopped by {name}; every output is complete or not written (a stopped `itmatch train` continues with "
        "--resume)"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
    process = interruptible("data", "synth", "--out", str(tmp_path / "s"))
    time.sleep(0.2)  # `import itmatch` is quick; the CLI's libraries (PyTorch) take about a second
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = process.stderr.read()
    assert err.splitlines() == [stopped("Ctrl-C")]
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_file_goes_at_the_next_write(tmp_path):
    """A process killed outright (SIGKILL) cannot remove its temporary file; the next write of that output does
    (and leaves another output's temporary files, and a user's files, alone)."""
    from itmatch.fileio import _HOST, atomic_path

    pid = dead_pid()
    mine = tmp_path / f".sims.npy.itmatch-{_HOST}-{pid}.abcd1234.tmp"
    other = tmp_path / f".other.npy.itmatch-{_HOST}-{pid}.abcd1234.tmp"
    for path in (mine, other, tmp_path / "notes.txt"):
        path.write_text("x")
    with atomic_path(tmp_path / "sims.npy") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "notes.txt", "sims.npy"])


def test_ctrl_c_after_a_folder_took_its_place_leaves_no_hidden_copy(tmp_path, monkeypatch):
    from itmatch import fileio

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    remove = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        if ".itmatch-old-" in Path(path).name and not kwargs.get("ignore_errors"):
            raise KeyboardInterrupt  # Ctrl-C while the old copy is being removed
        remove(path, *args, **kwargs)

    monkeypatch.setattr(fileio.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_dir(out) as new:
            (new / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_a_killed_servers_query_pictures_go_when_a_server_starts(tmp_path, monkeypatch):
    import tempfile

    from itmatch.fileio import _HOST, scratch_dir
    from itmatch.serve.service import QUERY_FOLDER, Limits, Service

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / f".{QUERY_FOLDER}.itmatch-{_HOST}-{dead_pid()}.abcd1234.tmp"
    left.mkdir()
    (left / "query.bmp").write_bytes(b"BM")
    with scratch_dir(QUERY_FOLDER) as live:  # this process's own, in use
        service = Service(searcher=types.SimpleNamespace(index=None), shortlist=10, workers=1, limits=Limits())
        service.close()
        assert not left.exists() and live.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_being_written_is_not_written_by_a_second_process(synthetic, tmp_path, capsys):
    """The lock is per open folder, so this process holding it stands for another itmatch process."""
    from itmatch.fileio import folder_lock
    from train_support import synthetic_data as train_data, train_args

    data, models = synthetic
    index = tmp_path / "index"
    assert main(build_argv(data, models, index)) == 0
    before = listing(index)
    with folder_lock(index):
        with pytest.raises(ItmatchError, match="index: another itmatch process is writing this folder now"):
            add_to_index(index, data, split="dev")
        assert main(build_argv(data, models, index)) == 2
        assert "give --out another folder" in capsys.readouterr().err
    assert listing(index) == before
    assert add_to_index(index, data, split="dev")["skipped"] == 0  # released
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run):
        assert main(["train", *train_args("sgr", train_data(tmp_path / "train"), run, "run.max_steps=1")]) == 2
    assert "run: another itmatch process is writing this folder now" in capsys.readouterr().err
    assert list(run.iterdir()) == []
    pictures = sorted((picture_dataset().parent / "png").glob("*.png"))[:2]
    features = tmp_path / "features"
    features.mkdir()
    with folder_lock(features):  # a second extraction would remove the first's unfinished work under it
        assert main(["extract", "--images", str(pictures[0].parent), "--out", str(features), "--no-progress"]) == 2
    assert "features: another itmatch process is writing this folder now" in capsys.readouterr().err
    assert list(features.iterdir()) == []
    assert extract_features(pictures, features, progress=False).computed == 2  # released


def test_indexing_an_unfinished_extraction_says_to_finish_it(tmp_path):
    from itmatch.search.gallery import open_gallery

    (tmp_path / "features" / ".partial").mkdir(parents=True)
    with pytest.raises(ItmatchError, match="extraction did not finish; run the same `itmatch extract` again"):
        open_gallery(tmp_path / "features")
