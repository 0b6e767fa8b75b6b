"""Exact resume: a run stopped or killed at any step and resumed in a new process ends with the same weights,
optimizer state and log as a run that was never interrupted (CPU, float32, dropout on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import ROOT, checkpoint, max_difference, run_train, synthetic_data, train_args

from itmatch.checkpoint import load_checkpoint
from itmatch.evaluate import evaluate_split
from itmatch.fileio import MARKER, owning_folder
from itmatch.train.run_folder import RUN_FILES

STEPS = 22  # one epoch is 19 batches of 16: the runs cross an epoch end (validation, best.pt, log line)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_data(tmp_path_factory.mktemp("resume"), train=60, dev=20, test=20)


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    done = run_train(train_args("saf", data, out, f"run.max_steps={STEPS}"))
    assert f"trained {STEPS} steps, 1 epochs; best dev rsum" in done.stdout
    return out


def assert_same_run(a: Path, b: Path) -> None:
    last_a, last_b = checkpoint(a / "last.pt"), checkpoint(b / "last.pt")
    assert (last_a["step"], last_a["epoch"], last_a["step_in_epoch"]) == (STEPS, 1, STEPS - 19)
    assert (last_b["step"], last_b["epoch"], last_b["step_in_epoch"]) == (STEPS, 1, STEPS - 19)
    assert max_difference(last_a["state_dict"], last_b["state_dict"]) <= 1e-6
    state_a, state_b = last_a["optimizer"]["state"], last_b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert max_difference(state_a[key], state_b[key]) <= 1e-6
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (a, b)]
    for record in logs[0] + logs[1]:
        record.pop("time")
    assert logs[0] == logs[1] and len(logs[0]) == 1


def test_stop_and_resume_in_a_new_process(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_train(train_args("saf", data, out, "run.max_steps=7"))
    first = checkpoint(out / "last.pt")
    assert (first["step"], first["step_in_epoch"]) == (7, 7) and not (out / "best.pt").exists()
    run_train([*train_args("saf", data, out, f"run.max_steps={STEPS}"), "--resume"])
    assert_same_run(uninterrupted, out)


def test_kill_at_any_step_and_resume(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = train_args("saf", data, out, f"run.max_steps={STEPS}", "run.checkpoint_every=1")
    process = subprocess.Popen([sys.executable, "-m", "itmatch", "train", *args], cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() or checkpoint(out / "last.pt")["step"] < 3:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # wherever it is: inside a step, or writing a checkpoint
    process.wait()
    killed_at = checkpoint(out / "last.pt")["step"]
    assert 3 <= killed_at < STEPS
    run_train(train_args("saf", data, out, f"run.max_steps={STEPS}") + ["--resume"])
    assert_same_run(uninterrupted, out)
    assert not list(out.glob(".*.tmp"))


class Killed(Exception):
    """Where the test ends a run, as a kill would."""


def test_killed_after_the_first_best_checkpoint(data: Path, uninterrupted: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after its first epoch wrote best.pt (and its log line) but before the epoch's last.pt, with
    no save between steps before it (checkpoint_every longer than an epoch), resumes to the same run."""
    import itmatch.train.loop as loop
    from itmatch.cli import main

    out = tmp_path / "run"
    args = train_args("saf", data, out, f"run.max_steps={STEPS}", "run.checkpoint_every=1000")
    save = loop.save_checkpoint

    def killed_at_the_epoch_end(path: Path, content: dict) -> None:
        if path.name == "last.pt" and content["epoch"] == 1:
            raise Killed
        save(path, content)

    monkeypatch.setattr(loop, "save_checkpoint", killed_at_the_epoch_end)
    with pytest.raises(Killed):
        main(["train", *args])
    monkeypatch.undo()
    assert (out / "best.pt").exists() and checkpoint(out / "last.pt")["step"] == 0  # the start's state
    assert main(["train", *args]) == 2  # it holds a run: --resume, not a new start over it
    run_train([*args, "--resume"])
    assert_same_run(uninterrupted, out)


def test_a_run_stopped_before_its_first_step_starts_over(data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import itmatch.train.loop as loop
    from itmatch.cli import main

    out = tmp_path / "run"
    args = train_args("saf", data, out, "run.max_steps=2")
    monkeypatch.setattr(loop._Trainer, "_train_epoch", lambda self: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        main(["train", *args])
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == ["config.toml", "last.pt", "log.jsonl"]
    assert main(["train", *args]) == 0 and checkpoint(out / "last.pt")["step"] == 2  # a new start, not refused


def test_run_directory_contents(data: Path, uninterrupted: Path) -> None:
    out = uninterrupted
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "best.pt", "config.toml", "last.pt", "log.jsonl"]
    assert all(owning_folder(out / name) == (out, "itmatch-run") for name in RUN_FILES)  # no other output there
    assert "max_steps = 22" in (out / "config.toml").read_text()
    best = checkpoint(out / "best.pt")  # weights_only: plain tensors and values
    assert best["epoch"] == 0 and best["best_rsum"] == pytest.approx(best["dev"]["rsum"])
    record = json.loads((out / "log.jsonl").read_text())
    assert set(record) == {"epoch", "step", "loss", "lr", "time", "dev"} and record["lr"] == pytest.approx(2e-4)
    assert record["dev"]["rsum"] == pytest.approx(best["best_rsum"]) and record["dev"]["n_images"] == 20
    loaded = load_checkpoint(out / "best.pt")  # the model loader reads training checkpoints too
    assert loaded.source == "training" and loaded.model.model_name == "saf" and loaded.vocab is not None
    result = evaluate_split(data, "dev", checkpoints=[out / "best.pt"])  # `itmatch evaluate`'s code
    assert result["rsum"] == pytest.approx(best["best_rsum"], abs=1e-6)
