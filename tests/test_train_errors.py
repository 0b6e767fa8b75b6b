"""Bad input to `itmatch train` gives one clear line naming the file or key and the fix, exit code 2, and
writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import ROOT, checkpoint, max_difference, synthetic_data, train_args

from itmatch.cli import main
from itmatch.fileio import MARKER


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_data(tmp_path_factory.mktemp("errors"), train=8, dev=4, test=2)


@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *train_args("sgr", data, out, "run.max_steps=1")]) == 0
    return out


def fails(capsys: pytest.CaptureFixture, args: list[str], *expected: str) -> str:
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def recipe(tmp_path: Path, edit) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(edit((ROOT / "configs" / "sgr_f30k.toml").read_text()))
    return path


def with_config(args: list[str], config: Path) -> list[str]:
    return [str(config) if i and args[i - 1] == "--config" else a for i, a in enumerate(args)]


def test_missing_and_unknown_recipe_keys(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    missing = recipe(tmp_path, lambda t: t.replace("margin = 0.2\n", ""))
    fails(capsys, with_config(train_args("sgr", data, out), missing), str(missing), "missing key(s) loss.margin")
    typo = recipe(tmp_path, lambda t: t.replace("hardest_negative", "hardest_negatives"))
    fails(capsys, with_config(train_args("sgr", data, out), typo), "unknown key(s) loss.hardest_negatives",
          "the keys are: margin, hardest_negative, mask_same_image")
    fails(capsys, train_args("sgr", data, out, "optim.learning_rate=1e-3"), "--set optim.learning_rate",
          "unknown config key")
    fails(capsys, train_args("sgr", data, out, "model.args.sim_dimm=8"), "config [model]", "sim_dimm")
    fails(capsys, train_args("sgr", data, out, "model.name=sgrr"), "unknown model 'sgrr'")
    fails(capsys, train_args("sgr", data, out, "model.args.vocab_size=7"), "model.args.vocab_size = 7",
          "drop the key")
    assert not out.exists()


def test_another_run_in_out_needs_resume(data: Path, finished: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    fails(capsys, train_args("sgr", data, finished), str(finished), "holds another training run",
          "pass --resume")
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before


def test_resume_checks_it_is_the_same_run(data: Path, finished: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    fails(capsys, [*train_args("sgr", data, finished, "optim.lr=1e-3"), "--resume"],
          "config.toml: --resume with a different config (optim.lr 0.0002 -> 0.001)",
          "schedule.epochs, run.max_steps, run.checkpoint_every, run.recompute_activations may change")
    other = tmp_path / "vocab.json"
    words = json.loads((data / "vocab.json").read_text())
    first = next(w for w, i in words["word2idx"].items() if i == 4)
    second = next(w for w, i in words["word2idx"].items() if i == 5)
    words["word2idx"][first], words["word2idx"][second] = 5, 4
    words["idx2word"]["4"], words["idx2word"]["5"] = second, first
    other.write_text(json.dumps(words))
    args = train_args("sgr", data, finished) + ["--resume"]
    args[args.index("--vocab") + 1] = str(other)
    fails(capsys, args, str(other), "not the vocabulary this run was trained with")
    for split in ("train", "dev"):  # the same counts, other captions: other data
        other_data = tmp_path / f"other-{split}"
        shutil.copytree(data, other_data)
        captions = (other_data / f"{split}_caps.txt").read_text().splitlines()
        captions[0] = captions[1]
        (other_data / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
        args = train_args("sgr", other_data, finished) + ["--resume"]
        fails(capsys, args, f"the {split} split ({other_data / f'{split}_caps.txt'} and its features) is not the "
              "one the run was trained on; resume with the same --data")
    features = np.load(data / "train_ims.npy")
    features[-1] += 1  # the same captions, other features (e.g. extracted again another way)
    other_data = tmp_path / "other-features"
    shutil.copytree(data, other_data)
    np.save(other_data / "train_ims.npy", features)
    fails(capsys, train_args("sgr", other_data, finished) + ["--resume"], "the train split", "is not the one")
    fails(capsys, [*train_args("sgr", data, tmp_path / "none"), "--resume"], "no training run to resume")
    no_config = [a for a in train_args("sgr", data, tmp_path / "none") if not a.endswith(".toml")]
    fails(capsys, [a for a in no_config if a != "--config"], "give the recipe with --config")


def test_resume_without_last_pt_never_starts_over_on_a_run_that_trained(data: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """last.pt deleted (it is the large file) but best.pt and the log kept: a new start would overwrite both."""
    copy = tmp_path / "run"
    assert main(["train", *train_args("sgr", data, copy, "schedule.epochs=1")]) == 0
    assert (copy / "best.pt").exists()
    (copy / "last.pt").unlink()
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    fails(capsys, [*train_args("sgr", data, copy, "run.max_steps=1"), "--resume"],
          f"{copy}: has no last.pt to resume from", "put last.pt back, or train into a new --out")
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_a_run_that_failed_at_its_first_step_can_be_started_again(data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out, broken = tmp_path / "run", tmp_path / "broken"
    shutil.copytree(data, broken)
    features = np.load(broken / "train_ims.npy")
    features[1:] = np.nan  # the first picture is fine: the check before the run passes, the first batch fails
    np.save(broken / "train_ims.npy", features)
    fails(capsys, train_args("sgr", broken, out, "run.max_steps=1"), "hold NaN or infinite values")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.toml", "last.pt", "log.jsonl"]
    assert checkpoint(out / "last.pt")["step"] == 0  # the start's state, which a new start may replace
    assert main(["train", *train_args("sgr", data, out, "run.max_steps=1")]) == 0
    assert checkpoint(out / "last.pt")["step"] == 1


#: TSHSR's model arguments added after the first TSHSR runs were saved (and their defaults).
ADDED_SINCE = {"readout": "sigmoid", "relation_norm": "softmax", "glove": None, "freeze_embeddings": False}


def test_resume_of_a_run_saved_before_new_model_fields(data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A ``last.pt`` whose ``model_args`` lack fields added since resumes as if they held their defaults (to the
    same weights as the full arguments give); a real change of a value is still refused, naming it."""
    full, old = tmp_path / "full", tmp_path / "old"
    assert main(["train", *train_args("tshsr", data, full, "run.max_steps=1")]) == 0
    shutil.copytree(full, old)
    saved = checkpoint(old / "last.pt")
    assert {name: saved["model_args"].pop(name) for name in ADDED_SINCE} == ADDED_SINCE
    torch.save(saved, old / "last.pt")
    for run in (full, old):
        assert main(["train", *train_args("tshsr", data, run, "run.max_steps=2"), "--resume"]) == 0
    resumed = checkpoint(old / "last.pt")
    assert resumed["step"] == 2 and resumed["model_args"] == checkpoint(full / "last.pt")["model_args"]
    assert max_difference(resumed["state_dict"], checkpoint(full / "last.pt")["state_dict"]) == 0.0

    resumed["model_args"]["readout"] = "inner"
    del resumed["model_args"]["relation_norm"]
    torch.save(resumed, old / "last.pt")
    fails(capsys, [*train_args("tshsr", data, old, "run.max_steps=3"), "--resume"],
          f"{old / 'last.pt'} holds a tshsr with other model arguments than the config (readout 'inner' -> "
          "'sigmoid'); resume with the run's config")


def test_a_missing_dev_split(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "dev_ims.npy").unlink()
    out = tmp_path / "run"
    fails(capsys, train_args("sgr", copy, out), "no dev split (dev_ims.npy missing)", "validates on dev")
    assert not out.exists()
    fails(capsys, train_args("sgr", tmp_path / "nowhere", out), "vocab.json")


def test_each_epoch_prints_one_line_matching_the_log(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                                     ) -> None:
    """Even without a progress bar a run is never silent: one line per epoch with the logged loss, dev rsum and
    seconds, then the summary."""
    out = tmp_path / "run"
    assert main(["train", *train_args("sgr", data, out, "schedule.epochs=2")]) == 0
    lines = capsys.readouterr().out.splitlines()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and len(lines) == 3 and lines[2].startswith("trained ")
    for line, entry in zip(lines, log):
        assert line == (f"epoch {entry['epoch']} of 2: loss {entry['loss']:.4f}, dev rsum {entry['dev']['rsum']:.1f}, "
                        f"{entry['time']:.1f} s")
