"""Trains and evaluates the runs of a plan, row by row, resumably: a run continues from its last checkpoint, and a
row's test result is kept in ``OUT/results/`` once computed, so a killed reproduction picks up where it was."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from itmatch.data.folder import VOCAB_FILE
from itmatch.errors import ItmatchError
from itmatch.fileio import write_json
from itmatch.papers.plan import Plan, PlannedRun, run_state
from itmatch.papers.tables import DATASETS, PROTOCOL_SPLITS, Row
from itmatch.train.config import fixed_settings, load_config


def dataset_paths(data: Path, vocab: Path | None, dataset: str) -> tuple[Path, Path]:
    """The precomp folder ``DATA/{dataset}_precomp`` and its vocabulary: ``VOCAB/{dataset}_precomp_vocab.json``
    when ``--vocab`` VOCAB is given (the authors' file names); else the same name in DATA, else
    ``DATA/{dataset}_precomp/vocab.json``."""
    folder = data / DATASETS[dataset]
    if not folder.is_dir():
        raise ItmatchError(f"{folder}: no such folder; --data must hold {DATASETS[dataset]}/ (the SCAN release's "
                           "data/ folder layout), see docs/reproducing.md")
    named = f"{DATASETS[dataset]}_vocab.json"
    if vocab is not None:
        if not (vocab / named).is_file():
            raise ItmatchError(f"--vocab {vocab}: give the folder holding {named} (the authors' vocabulary files)")
        return folder, vocab / named
    candidates = [data / named, folder / VOCAB_FILE]
    for path in candidates:
        if path.is_file():
            return folder, path
    raise ItmatchError(f"no vocabulary for {dataset}: neither {candidates[0]} nor {candidates[1]} exists; pass "
                       "--vocab DIR with the authors' vocabulary files")


def result_path(plan: Plan, row: Row) -> Path:
    """Where the test result of ``row`` (its runs, or its released checkpoint, under its protocol) is kept."""
    name = "+".join(row.runs) if row.runs else f"checkpoint-{row.checkpoint}"
    return plan.out / "results" / f"{name}.{plan.protocol or row.protocol}.json"


def _made_from(runs: list[PlannedRun]) -> dict[str, dict]:
    """What a row's result is computed from: each run's settings as trained (its config.toml, less what a resumed
    run may change) and the SHA-256 of its ``best.pt``; None for what is not there."""
    made = {}
    for run in runs:
        folder = run.files
        settings = fixed_settings(load_config(folder.config)) if folder.config.is_file() else None
        made[run.id] = {"config": settings, "best": _sha256(folder.best) if folder.best.is_file() else None}
    return made


def _still_holds(recorded: dict[str, dict] | None, now: dict[str, dict]) -> bool:
    """Whether a kept result still describes its runs: every run whose ``best.pt`` is there has the recorded
    settings and ``best.pt`` (a run trained further or again is evaluated again); a run folder removed to free
    space keeps its result, and so does a result of an itmatch that recorded nothing."""
    if recorded is None:
        return True
    return all(entry["best"] is None or recorded.get(run_id) == entry for run_id, entry in now.items())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Runner:
    """Produces the measured result of each row of ``plan``; ``train`` off (``--rows-from``) only evaluates
    finished runs. ``device`` and ``progress`` go to the trainer and the evaluation; ``trust`` lets released
    checkpoints holding arbitrary pickled objects load."""

    def __init__(self, plan: Plan, *, data: Path | None, vocab: Path | None, train: bool = True,
                 device: str = "auto", progress: bool = True, trust: bool = False,
                 echo: Callable[[str], None] = print) -> None:
        self.plan, self.data, self.vocab, self.train = plan, data, vocab, train
        self.device, self.progress, self.trust, self.echo = device, progress, trust, echo

    def check_inputs(self) -> None:
        """Refuse, before any training, what would fail or be ignored hours later: a released checkpoint that is
        not there, a run folder holding a run of other settings than planned, a ``--data`` holding none of the
        table's datasets, a ``--vocab`` without a vocabulary one of them needs."""
        for name, path in self.plan.checkpoints.items():
            if not path.is_file():
                raise ItmatchError(f"--checkpoint {name}={path}: no such model file")
        if self.train:  # a run folder of other settings (--rows-from reports the runs as they were trained)
            for run in self.plan.runs.values():
                run.check_same_settings()
        if self.data is None:
            return
        needed = sorted({row.dataset for row in self.plan.table.rows if row.runs or row.checkpoint})
        present = [name for name in needed if (self.data / DATASETS[name]).is_dir()]
        if needed and not present:
            raise ItmatchError(f"{self.data}: holds none of {', '.join(DATASETS[n] + '/' for n in needed)}; give "
                               "--data the folder that holds them (the SCAN release's data/)")
        for name in present:
            dataset_paths(self.data, self.vocab, name)

    def row_result(self, row: Row) -> dict | None:
        """The row's evaluation result (``itmatch evaluate``'s JSON), or None when its runs are not finished
        (or its released checkpoint was not given)."""
        if row.checkpoint:
            return self._checkpoint_result(row)
        path = result_path(self.plan, row)
        runs = [self.plan.runs[run_id] for run_id in row.runs]
        kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        # training, a kept result stands for the plan only if its runs have all the planned epochs (a larger
        # --epochs-scale trains them on, and then evaluates them again)
        planned = not self.train or all(run.state() == "finished" for run in runs if run.files.config.is_file())
        if kept is not None and planned and _still_holds(kept.get("made_from"), _made_from(runs)):
            return kept
        if self.data is not None and self._dataset_missing(row):
            return None
        for run in runs:
            if run_state(run.directory, run.config if self.train else None) != "finished":
                if not self.train:
                    return None
                self._train(run)
        checkpoints = [run.files.best for run in runs]
        if not all(p.is_file() for p in checkpoints):
            self.echo(f"{row.method}: no best.pt yet (a run stopped before its first epoch ended); not evaluated")
            return None
        if self.data is None:
            raise ItmatchError(f"{row.method}: its runs are finished but not evaluated; give --data to evaluate them")
        result = {**self._evaluate(row, checkpoints), "made_from": _made_from(runs)}  # best.pt as evaluated
        write_json(path, result)
        return result

    def _checkpoint_result(self, row: Row) -> dict | None:
        """A released checkpoint's result: kept from an earlier call if it came from the same file, else
        evaluated now (no training); None, with a line saying what to pass, when no file was given."""
        path = result_path(self.plan, row)
        given = self.plan.checkpoints.get(row.checkpoint)
        kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if given is None or (kept is not None and kept.get("sources") == [str(given)]):
            if kept is None:
                self.echo(f"{row.method}: give --checkpoint {row.checkpoint}=PATH (the released model) to "
                          "evaluate it")
            return kept
        if self.data is None:
            raise ItmatchError(f"{row.method}: give --data to evaluate the released checkpoint {given}")
        if self._dataset_missing(row):
            return None
        result = self._evaluate(row, [given])
        write_json(path, result)
        return result

    def _dataset_missing(self, row: Row) -> bool:
        """Whether ``--data`` lacks the row's dataset folder (said in one line: the row is skipped, not failed)."""
        folder = self.data / DATASETS[row.dataset]
        if folder.is_dir():
            return False
        self.echo(f"{row.method}: {folder} not found; row not run")
        return True

    def _train(self, run: PlannedRun) -> None:
        from itmatch.train import train

        if self.data is None:
            raise ItmatchError("give --data (the folder holding f30k_precomp/ and coco_precomp/) to train")
        folder, vocab = dataset_paths(self.data, self.vocab, run.dataset)
        resume = run.files.config.is_file()
        self.echo(f"{'resuming' if resume else 'training'} {run.id} ({run.config.schedule.epochs} epochs) in "
                  f"{run.directory}")
        result = train(run.config, data=folder, vocab=vocab, out=run.directory, resume=resume, device=self.device,
                       progress=self.progress)
        self.echo(result.summary())

    def _evaluate(self, row: Row, checkpoints: list[Path]) -> dict:
        from itmatch.evaluate import evaluate_split

        folder, vocab = dataset_paths(self.data, self.vocab, row.dataset)
        protocol = self.plan.protocol or row.protocol
        split = "test" if self.plan.protocol else PROTOCOL_SPLITS[protocol]
        self.echo(f"evaluating {' + '.join(row.runs) or checkpoints[0]} on {folder}/{split} ({protocol})")
        device = None if self.device == "auto" else self.device
        return evaluate_split(folder, split, checkpoints=checkpoints, vocab=vocab,
                              protocol=None if protocol == "full" else protocol, device=device,
                              trust=self.trust, progress=self.progress)
