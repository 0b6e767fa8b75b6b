"""Error messages that fit the case: a checkpoint's blocked object is named with the option that allows it, NaN
features are reported by file and row with nothing written, and bad model sizes and mistyped values name their field."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model

from itmatch.checkpoint import load_model, save_model
from itmatch.cli import main
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import build_vocab, load_vocab
from itmatch.errors import ItmatchError


class Call:
    """Unpickles into a call of ``os.getcwd`` (harmless, but from a module torch blocks, like ``os.system``)."""

    def __reduce__(self):
        return os.getcwd, ()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    data = write_synthetic(root / "data", n_images={"train": 4, "dev": 6, "test": 20}, feature_dim=SMALL["img_dim"])
    model = small_model("sgr", vocab_size=len(load_vocab(data / "vocab.json")))
    save_model(root / "sgr.safetensors", model, vocab=load_vocab(data / "vocab.json").to_json())
    return data, root / "sgr.safetensors", model


@pytest.mark.parametrize("extra, name", [(Call(), "posix.getcwd"), (np.float64(1.5), "numpy")])
def test_a_checkpoint_with_a_pickled_object_names_it_and_the_option(dataset, tmp_path, capsys, extra, name):
    _, _, model = dataset
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "extra": extra}, path)
    with pytest.raises(ItmatchError, match=rf"model.pt: holds the Python object {name}[\w.]*, beyond tensors and "
                                           r"options; if you trust its source, pass --trust-checkpoint"):
        load_model(path)
    assert main(["evaluate", "--data", str(dataset[0]), "--checkpoint", str(path), "--no-progress"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err


def test_nan_features_are_named_by_file_and_row_and_no_scores_are_saved(dataset, tmp_path, capsys):
    data, checkpoint, _ = dataset
    broken = tmp_path / "data"
    broken.mkdir()
    for path in Path(data).iterdir():
        (broken / path.name).symlink_to(path)
    features = np.load(data / "test_ims.npy")
    features[3, 0, 0] = np.nan
    features[17, 5, 2] = np.inf
    (broken / "test_ims.npy").unlink()
    np.save(broken / "test_ims.npy", features)
    sims = tmp_path / "sims.npy"
    assert main(["evaluate", "--data", str(broken), "--checkpoint", str(checkpoint), "--save-sims", str(sims),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{broken / 'test_ims.npy'}: feature rows 3, 17 hold NaN or infinite values" in err
    assert not sims.exists() and not list(tmp_path.glob(".sims*"))


def test_nan_in_saved_scores_names_the_file(dataset, tmp_path, capsys):
    data = dataset[0]
    scores = np.zeros((20, 100), np.float32)
    scores[7, 3] = np.nan
    np.save(tmp_path / "scores.npy", scores)
    assert main(["evaluate", "--data", str(data), "--sims", str(tmp_path / "scores.npy")]) == 2
    assert f"{tmp_path / 'scores.npy'}: scores of images 7 are NaN; save them again" in capsys.readouterr().err


def one_line_error(capsys, argv: list[str], expected: str) -> str:
    """Run ``argv``: it must fail with one line holding ``expected``; that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    return err


def test_a_mistyped_device_folder_arguments_and_a_missing_run_folder_are_one_line_errors(dataset, tmp_path, capsys):
    data, sgr, _ = dataset
    one_line_error(capsys, ["evaluate", "--data", str(data), "--checkpoint", str(sgr), "--device", "gpu"],
                   "--device 'gpu': use cpu, cuda or cuda:N")
    one_line_error(capsys, ["data", "vocab", "--captions", str(data), "--out", str(tmp_path / "v.json")],
                   f"{data}: is a folder; give a caption file")
    one_line_error(capsys, ["train", "--config", str(data), "--data", str(data), "--vocab", str(data / "vocab.json"),
                            "--out", str(tmp_path / "run")], f"{data}: is a folder; give --config a recipe file")
    one_line_error(capsys, ["reproduce", "--paper", "sgraf", "--table", "5", "--rows-from",
                            str(tmp_path / "missing"), "--out", str(tmp_path / "t5")], "no such run folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_damaged_index_and_a_bad_model_file_are_named(dataset, tmp_path, capsys):
    import shutil

    from itmatch.models import create_model
    from itmatch.search import build_index

    data, _, _ = dataset
    vocab = load_vocab(data / "vocab.json")
    vse = tmp_path / "vse.safetensors"
    torch.manual_seed(0)
    save_model(vse, create_model("vse", vocab_size=len(vocab), img_dim=SMALL["img_dim"], embed_size=32),
               vocab=vocab.to_json())
    broken = tmp_path / "broken.pt"
    broken.write_text("not a model")
    one_line_error(capsys, ["index", "build", "--features", str(data), "--split", "test", "--embedder", str(broken),
                            "--out", str(tmp_path / "index")], f"error: {broken}: not a checkpoint")
    index = tmp_path / "index"
    build_index(data, index, split="test", embedder=vse)
    for damage, words in (("index.json", "index.json: unreadable"),
                          ("seg-00000/image_emb.npy", "the index is damaged or incomplete (FileNotFoundError")):
        copy = tmp_path / "copy"
        shutil.copytree(index, copy)
        if damage.endswith(".json"):
            (copy / damage).write_text("{bad")
        else:
            (copy / damage).unlink()
        one_line_error(capsys, ["search", "--index", str(copy), "a dog"], words)
        shutil.rmtree(copy)
    copy = tmp_path / "copy"
    shutil.copytree(index, copy)
    stored = json.loads((copy / "index.json").read_text())["embedder"]["file"]
    (copy / stored).unlink()  # the index's copy of the model, not the user's file it was copied from
    one_line_error(capsys, ["search", "--index", str(copy), "a dog"],
                   f"{copy}: the index is damaged or incomplete ({stored} is missing)")


@pytest.mark.parametrize("name, args, expected", [
    ("sgr", {"embed_size": -5}, "embed_size = -5: must be > 0"),
    ("saf", {"dropout": 1.0}, "dropout = 1.0: must be in [0, 1)"),
    ("saf", {"dropout": float("nan")}, "dropout = nan: must be in [0, 1)"),
    ("tshsr", {"sim_dim": "256"}, "sim_dim = '256': expected int"),
    ("ave", {"lambda_softmax": True}, "lambda_softmax = True: expected float"),
    ("vse", {"region_drop": 2}, "region_drop = 2.0: must be in [0, 1)"),
    ("vse", {"pool_k": 2.5}, "pool_k = 2.5: expected int"),
    ("hrem", {"relation_heads": 0}, "relation_heads = 0: must be > 0"),
    ("hrem", {"glove": 5}, "glove = 5: expected str or none"),
])
def test_a_model_size_or_probability_out_of_range_or_of_the_wrong_type_is_named(name, args, expected):
    from itmatch.models import create_model

    with pytest.raises(ItmatchError, match=re.escape(expected)):
        create_model(name, **args)


def test_an_int_is_taken_for_a_float_field():
    model = small_model("sgr", lambda_softmax=9)
    assert type(model.config.lambda_softmax) is float and model.config.lambda_softmax == 9.0


def test_train_names_the_settings_that_fit_the_features_and_refuses_nan_features(tmp_path, capsys):
    from train_support import synthetic_data, train_args

    data = synthetic_data(tmp_path / "data", train=12, dev=6, test=6)
    out = tmp_path / "run"
    one_line_error(capsys, ["train", *train_args("sgr", data, out, "model.args.img_dim=48",
                                                 "model.args.num_regions=20")],
                   f"{data / 'train_ims.npy'}: image features must be (N, 20, 48) for this model (sgr), got "
                   "(1, 36, 32); fit the recipe to the features: --set model.args.num_regions=36 --set "
                   "model.args.img_dim=32")
    assert not out.exists()  # refused before the run folder was made
    features = np.load(data / "train_ims.npy")
    features[7, 2, 3] = np.nan
    np.save(data / "train_ims.npy", features)
    one_line_error(capsys, ["train", *train_args("sgr", data, out, "schedule.epochs=1")],
                   f"{data / 'train_ims.npy'}: feature rows 7 hold NaN or infinite values")
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 0  # nothing trained was saved


def test_encode_refuses_nan_features_and_writes_nothing(dataset, tmp_path, capsys):
    from itmatch.models import create_model

    data = dataset[0]
    vocab = load_vocab(data / "vocab.json")
    vse = tmp_path / "vse.safetensors"
    save_model(vse, create_model("vse", vocab_size=len(vocab), img_dim=SMALL["img_dim"], embed_size=32),
               vocab=vocab.to_json())
    broken = tmp_path / "data"
    broken.mkdir()
    for path in Path(data).iterdir():
        (broken / path.name).symlink_to(path)
    features = np.load(data / "test_ims.npy")
    features[11, 4, 1] = -np.inf
    (broken / "test_ims.npy").unlink()
    np.save(broken / "test_ims.npy", features)
    one_line_error(capsys, ["encode", "--checkpoint", str(vse), "--data", str(broken), "--out", str(tmp_path / "emb"),
                            "--no-progress"], f"{broken / 'test_ims.npy'}: feature rows 11 hold NaN or infinite")
    assert not (tmp_path / "emb").exists() and not list(tmp_path.glob(".emb*"))


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--bogus"], "No such option: --bogus; see `itmatch evaluate --help`"),
    (["evaluate", "--max-memory", "-1"], "Invalid value for '--max-memory': Input should be greater than or equal "
                                         "to 1"),
    (["evaluate", "--sims", "s.npy", "--captions-per-image", "0"], "Invalid value for '--captions-per-image'"),
    (["data", "synth", "--out", "x", "--images", "3", "--dim", "abc"], "Invalid value for '--dim'"),
    (["train", "--config"], "Option '--config' requires an argument; see `itmatch train --help`"),
    (["nosuch"], "No such command 'nosuch'; see `itmatch --help`"),
])
def test_usage_errors_are_one_line(argv, expected, capsys):
    one_line_error(capsys, argv, expected)


def test_help_is_not_an_error(capsys):
    assert main(["evaluate", "--help"]) == 0
    assert "--max-memory" in capsys.readouterr().out
    assert main([]) == 2  # the command alone: its help, and the usage-error code
    assert "Commands" in capsys.readouterr().out


def test_extractor_options_are_checked_by_name_type_and_range(tmp_path, capsys):
    from itmatch.features import get_extractor

    with pytest.raises(ItmatchError, match="extractor 'ssd-mobilenet-v2' has no option 'nms'; its options are: "
                                           "regions, min_score, nms_iou"):
        get_extractor("ssd-mobilenet-v2", nms=0.3)
    with pytest.raises(ItmatchError, match="option min_score = 'high': expected float"):
        get_extractor("ssd-mobilenet-v2", min_score="high")
    with pytest.raises(ItmatchError, match=r"min_score must lie in \[0, 1\)"):
        get_extractor("ssd-mobilenet-v2", min_score=5)
    assert get_extractor("ssd-mobilenet-v2", min_score=0, nms_iou=1).config()["min_score"] == 0.0
    one_line_error(capsys, ["extract", "--images", str(tmp_path), "--out", str(tmp_path / "f"), "--option",
                            "regions=3"], "--option regions: set by the command itself; use --regions")
    one_line_error(capsys, ["data", "build", "manifest", "--manifest", str(tmp_path / "m.jsonl"), "--out",
                            str(tmp_path / "d"), "--option", "regions=3"], "--option regions: set by the command")


def test_an_output_through_a_link_or_onto_a_device_keeps_the_link_and_the_device(tmp_path, capsys):
    scores = np.eye(4, 20, dtype=np.float32).repeat(5, axis=1)[:, :20]
    np.save(tmp_path / "s.npy", scores)
    real, link, null = tmp_path / "real.json", tmp_path / "link.json", tmp_path / "null.json"
    real.write_text("{}")
    link.symlink_to(real)
    null.symlink_to(os.devnull)
    for output in (link, null):
        assert main(["evaluate", "--sims", str(tmp_path / "s.npy"), "--output", str(output)]) == 0
    assert link.is_symlink() and '"rsum"' in real.read_text()
    assert null.is_symlink() and Path(os.devnull).is_char_device()  # written into, never replaced


def test_outputs_that_cannot_be_written_are_refused_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    data, sgr, _ = dataset
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    one_line_error(capsys, ["evaluate", "--data", str(data), "-c", str(sgr), "--output", str(blocker / "r.json")],
                   f"{blocker} is a file, not a folder; give --output another path")
    one_line_error(capsys, ["data", "synth", "--out", str(blocker / "x"), "--images", "2"],
                   f"{blocker} is a file, not a folder; give --out another path")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    one_line_error(capsys, ["evaluate", "--data", str(data), "-c", str(sgr), "--output", str(locked / "r.json")],
                   f"cannot write into {locked} (permission denied)")
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in Path(data).iterdir():
        (copy / path.name).symlink_to(path)
    one_line_error(capsys, ["evaluate", "--data", str(copy), "-c", str(sgr), "--output", str(copy / "vocab.json")],
                   f"{copy / 'vocab.json'}: is one of the files of {data}, an itmatch-dataset folder; give --output")
    assert (copy / "vocab.json").is_symlink()
    for _ in range(2):  # a result of its own beside the data may be written, and written again
        assert main(["evaluate", "--data", str(copy), "-c", str(sgr), "--output", str(copy / "r.json"),
                     "--no-progress"]) == 0
    capsys.readouterr()


def test_what_must_be_writable_is_the_folder_that_gets_the_file(tmp_path, monkeypatch):
    from itmatch.fileio import FolderFormat, check_folder, check_writable

    link, features = tmp_path / "out.json", tmp_path / "features"
    link.symlink_to(os.devnull)
    features.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    check_writable(link, "--output")  # a device is written into: its folder need not be writable
    check_folder(features, FolderFormat("test", 1))  # a folder written in place: only it must be writable
    with pytest.raises(ItmatchError, match=f"cannot write into {tmp_path}"):
        check_writable(tmp_path / "new.json", "--output")


def test_a_system_error_on_a_users_path_is_one_line_naming_the_file_it_stands_for(tmp_path, capsys, monkeypatch):
    import errno

    import itmatch.cli.data

    def disk_full(out, **_):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".d.itmatch-host-7.abcd1234.tmp" / "x"))

    monkeypatch.setattr(itmatch.cli.data, "write_synthetic", disk_full)
    one_line_error(capsys, ["data", "synth", "--out", str(tmp_path / "d"), "--images", "2"],
                   f"{tmp_path / 'd' / 'x'}: No space left on device; free some disk space or write elsewhere")


def test_a_folder_given_for_a_file_names_the_file_to_give(dataset, tmp_path, capsys):
    data, sgr, _ = dataset
    one_line_error(capsys, ["evaluate", "--data", str(data), "-c", str(tmp_path)],
                   f"{tmp_path}: is a folder (a training run?); give a model file in it, e.g. {tmp_path / 'best.pt'}")
    one_line_error(capsys, ["evaluate", "--data", str(data), "-c", str(sgr), "--vocab", str(data)],
                   f"{data}: is a folder; give the vocabulary's JSON file (e.g. {data / 'vocab.json'})")


def test_a_saved_score_matrix_of_the_wrong_kind_is_named(dataset, tmp_path, capsys):
    data = dataset[0]
    np.savez(tmp_path / "s.npz", a=np.zeros((20, 100)))
    np.save(tmp_path / "c.npy", np.zeros((20, 100), complex))
    for sims, expected in ((tmp_path / "s.npz", "an .npz archive; give --sims one .npy score matrix"),
                           (tmp_path, "is a folder; give --sims a .npy score matrix"),
                           (tmp_path / "c.npy", "complex128 of shape (20, 100); a score matrix is 2-D real numbers")):
        one_line_error(capsys, ["evaluate", "--data", str(data), "--sims", str(sims)], f"{sims}: {expected}")


def test_train_refuses_a_vocabulary_that_knows_none_of_the_captions_words(tmp_path, capsys):
    from train_support import synthetic_data, train_args

    from itmatch.data.vocab import build_vocab, save_vocab

    data = synthetic_data(tmp_path / "data", train=12, dev=6, test=6)
    empty = tmp_path / "empty.json"
    save_vocab(build_vocab(["a dog"], threshold=2), empty)  # the special tokens only
    args = train_args("sgr", data, tmp_path / "run")
    args[args.index("--vocab") + 1] = str(empty)
    one_line_error(capsys, ["train", *args], f"{empty}: holds none of the words of the training captions")
    assert not (tmp_path / "run").exists()


def test_a_folder_as_manifest_and_a_non_png_explanation_are_named(tmp_path, capsys):
    one_line_error(capsys, ["data", "build", "manifest", "--manifest", str(tmp_path), "--out", str(tmp_path / "d")],
                   f"{tmp_path}: is a folder; give a .jsonl or .csv manifest")
    one_line_error(capsys, ["explain", "--index", str(tmp_path), "--image", "0", "--text", "a dog", "--out",
                            str(tmp_path / "e.jpg")], "explain draws a PNG; name the file *.png")


def test_an_ensemble_of_models_with_different_vocabularies_names_both(dataset, tmp_path, capsys):
    data, sgr, _ = dataset
    other = tmp_path / "other.safetensors"
    save_model(other, small_model("saf", vocab_size=7), vocab=build_vocab(["a dog", "a cat"], threshold=1).to_json())
    err = one_line_error(capsys, ["evaluate", "--data", str(data), "-c", str(sgr), "-c", str(other)],
                         f"{other}: trained with 7 words, but the vocabulary stored in {sgr} has")
    assert err.endswith("an ensemble's models must share the vocabulary they were trained with")


def test_train_refuses_a_split_of_one_picture(tmp_path, capsys):
    from train_support import synthetic_data, train_args

    data = synthetic_data(tmp_path / "data", train=1, dev=2, test=2)
    one_line_error(capsys, ["train", *train_args("sgr", data, tmp_path / "run")],
                   "the train split has 1 picture; training needs at least 2")
    assert not (tmp_path / "run").exists()
