"""Extraction in this process: a resumable run in the features folder's ``.partial/``.

While running, the arrays live in ``.partial/`` beside a ``plan.json`` (config + the pictures, by path, size and
modification time) and an append-only ``done.log`` (a JSON line per finished picture, appended only after the
arrays were flushed). A killed run resumes from there; a run over a changed list of pictures reuses every row
whose picture and config are unchanged, from the finished output or from the partial one. Finishing moves the
arrays into the folder of :mod:`itmatch.features.store`, ``extractor.json`` last.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from itmatch.errors import ItmatchError
from itmatch.features.base import Extractor, Regions, check_regions
from itmatch.features.images import UnreadableImage
from itmatch.features.store import (ARRAYS, FORMAT_VERSION, IMAGES_FILE, INFO_FILE, PARTIAL, SHARDS, FeatureSet,
                                    finished_plan, is_finished, key_tuple, open_features, shard_folders)
from itmatch.fileio import new_npy, write_json, write_text


def extract_here(extractor: Extractor, paths: list[Path], keys: list[dict[str, Any]], out: Path, batch_size: int,
                  progress: bool, skip_unreadable: bool, started: float, reuse: Sequence[Path] = ()) -> FeatureSet:
    """``extract_features`` in this process; rows are also reused from the features folders ``reuse`` and from
    the shares of an unfinished ``torchrun`` extraction into ``out`` (whatever its number of processes)."""
    config = extractor.config()
    if is_finished(out, config, keys):
        return open_features(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Partial.prepare(out, config, keys, extractor.regions, [*reuse, *shard_folders(out)])
    todo = [i for i in range(len(keys)) if i not in run.done]
    bar = _progress(len(todo), progress)
    try:
        for batch in _chunks(todo, max(1, batch_size)):
            run.write(batch, _extract_batch(extractor, [paths[i] for i in batch], skip_unreadable))
            bar.update(len(batch))
    finally:
        bar.close()
    run.finish()
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    return finished_result(out, len(todo), started)


def finished_result(out: Path, computed: int, started: float) -> FeatureSet:
    """The finished features folder ``out``, with how many pictures this call extracted since ``started``."""
    result = open_features(out)
    result.computed = computed
    result.seconds = time.perf_counter() - started
    return result


def merge_folders(out: Path, config: dict[str, Any], keys: list[dict[str, Any]], regions: int,
                  folders: Sequence[Path]) -> None:
    """Write the finished features folder ``out`` of the pictures ``keys`` (made with ``config``) from the
    finished features folders ``folders``, which together hold every picture; resumable like an extraction."""
    _Partial.prepare(out, config, keys, regions, folders).finish()


def _extract_batch(extractor: Extractor, paths: list[Path], skip_unreadable: bool) -> list[Regions | str]:
    """Regions per path; with ``skip_unreadable`` an undecodable picture gives its error message instead."""
    try:
        results: list[Regions | str] = list(extractor.extract(paths))
    except UnreadableImage:
        if not skip_unreadable:
            raise
        results = []
        for path in paths:  # find which picture(s) of the batch failed
            try:
                results += extractor.extract([path])
            except UnreadableImage as exc:
                results.append(str(exc))
    if len(results) != len(paths):
        raise ItmatchError(f"the {extractor.name} extractor returned {len(results)} results for {len(paths)} pictures")
    for path, result in zip(paths, results):
        if isinstance(result, Regions):
            check_regions(result, extractor.regions, str(path))
    return results


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc="extracting", unit="img", disable=not enabled or total == 0)


class _Partial:
    """The ``.partial`` folder of a run: full-size memmaps, ``plan.json`` and ``done.log``.

    ``done`` maps a finished row to ``{"width": w, "height": h}`` or ``{"error": message}``.
    """

    def __init__(self, directory: Path, out: Path, config: dict[str, Any], keys: list[dict[str, Any]],
                 regions: int) -> None:
        self.directory, self.out, self.config, self.keys, self.regions = directory, out, config, keys, regions
        self.done: dict[int, dict[str, Any]] = {}
        self.arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def prepare(cls, out: Path, config: dict[str, Any], keys: list[dict[str, Any]], regions: int,
                reuse: Sequence[Path] = ()) -> _Partial:
        """Resume the matching partial run, or start one that reuses every row it can; either way rows still
        missing are copied from the features folders ``reuse`` (finished or partial) where they hold them."""
        here = out / PARTIAL
        plan = _read_plan(here)
        if plan is not None and plan["config"] == config and plan["images"] == keys:
            run = cls(here, out, config, keys, regions)
            run.done = _read_done(here)
            if (here / "features.npy").is_file():
                run.arrays = {n: np.load(here / f"{n}.npy", mmap_mode="r+") for n in ARRAYS}
            run._reuse(reuse)
            return run

        fresh = out / (PARTIAL + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        run = cls(fresh, out, config, keys, regions)
        run._reuse([out, out / PARTIAL, *reuse])
        shutil.rmtree(here, ignore_errors=True)
        fresh.rename(here)
        run.directory = here
        return run

    def _reuse(self, folders: Sequence[Path]) -> None:
        """Copy rows of unchanged pictures (same config) from finished features folders and partial runs."""
        sources = [source for source in map(self._rows_of, folders) if source is not None]
        copied: list[int] = []
        for index, folder in sources:
            matches = [(i, index[key_tuple(k)]) for i, k in enumerate(self.keys)
                       if key_tuple(k) in index and i not in self.done]
            if not matches:
                continue
            source = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
            arrays = self._allocate(source["features"].shape[2])
            for i, (row, outcome) in matches:
                for name in ARRAYS:
                    arrays[name][i] = source[name][row]
                self.done[i] = outcome
                copied.append(i)
        if copied:
            self._commit(copied)

    def _rows_of(self, folder: Path) -> tuple[dict[tuple[str, int, int], tuple[int, dict[str, Any]]], Path] | None:
        """(picture key -> (row, outcome), folder) of a finished features folder or a partial run made with this
        run's config, or None."""
        finished = finished_plan(folder)
        if finished is not None and finished[0] == self.config:
            return {key_tuple(r): (r["row"], _outcome(r)) for r in finished[1]}, folder
        plan = _read_plan(folder)
        if plan is not None and plan["config"] == self.config and (folder / "features.npy").is_file():
            keys = plan["images"]
            return {key_tuple(keys[r]): (r, outcome) for r, outcome in _read_done(folder).items()}, folder
        return None

    def _allocate(self, dim: int) -> dict[str, np.ndarray]:
        """The full-size memmaps, created (with ``plan.json``) the first time, once D is known."""
        if self.arrays is None:
            n, r = len(self.keys), self.regions
            shapes = {"features": ((n, r, dim), np.float32), "boxes": ((n, r, 4), np.float32),
                      "labels": ((n, r), np.int32), "scores": ((n, r), np.float32)}
            self.arrays = {
                name: new_npy(self.directory / f"{name}.npy", dtype, shape) for name, (shape, dtype) in shapes.items()
            }
            write_json(self.directory / "plan.json", {"config": self.config, "images": self.keys, "dim": dim})
        return self.arrays

    def write(self, rows: list[int], results: list[Regions | str]) -> None:
        """Store one batch and record it as done (arrays flushed before the log lines are written)."""
        dims = [r.features.shape[1] for r in results if isinstance(r, Regions)]
        if self.arrays is None and not dims:  # nothing decoded yet: D unknown, keep only the errors
            for i, message in zip(rows, results):
                self.done[i] = {"error": message}
            self._log(rows)
            return
        arrays = self._allocate(self.arrays["features"].shape[2] if self.arrays else dims[0])
        dim = arrays["features"].shape[2]
        for i, result in zip(rows, results):
            if isinstance(result, str):
                self.done[i] = {"error": result}
                continue
            if result.features.shape[1] != dim:
                raise ItmatchError(f"{self.keys[i]['path']}: the extractor gave D={result.features.shape[1]} "
                                   f"features, earlier pictures D={dim}; an extractor must give one D")
            arrays["features"][i] = result.features
            arrays["boxes"][i] = result.boxes
            arrays["labels"][i] = result.labels
            arrays["scores"][i] = result.scores
            self.done[i] = {"width": result.width, "height": result.height}
        self._commit(rows)

    def _commit(self, rows: list[int]) -> None:
        for array in (self.arrays or {}).values():
            array.flush()  # type: ignore[attr-defined]
        self._log(rows)

    def _log(self, rows: list[int]) -> None:
        with open(self.directory / "done.log", "a", encoding="utf-8") as log:
            log.write("".join(json.dumps({"row": i, **self.done[i]}) + "\n" for i in rows))
            log.flush()
            os.fsync(log.fileno())

    def finish(self) -> None:
        """Move the complete arrays into the output folder; ``extractor.json`` last (idempotent after a crash)."""
        missing = len(self.keys) - len(self.done)
        if missing:
            raise ItmatchError(f"{self.out}: {missing} pictures are not extracted yet; rerun to resume")
        plan = _read_plan(self.directory)
        if plan is None:  # every picture failed to decode: D is unknown
            raise ItmatchError(f"{self.out}: no picture could be decoded ({self.done[0]['error']})")
        if self.arrays is not None:
            for array in self.arrays.values():
                array.flush()  # type: ignore[attr-defined]
            self.arrays = None
        images = self.directory / IMAGES_FILE
        if not images.exists():
            rows = [
                {"row": i, "path": k["path"], "width": self.done[i].get("width"), "height": self.done[i].get("height"),
                 "bytes": k["bytes"], "mtime_ns": k["mtime_ns"], **({"error": self.done[i]["error"]}
                                                                     if "error" in self.done[i] else {})}
                for i, k in enumerate(self.keys)
            ]
            write_text(images, "".join(json.dumps(r) + "\n" for r in rows))
        (self.out / INFO_FILE).unlink(missing_ok=True)
        for name in [f"{n}.npy" for n in ARRAYS] + [IMAGES_FILE]:
            if (self.directory / name).exists():
                os.replace(self.directory / name, self.out / name)
        write_json(self.out / INFO_FILE, {
            "format_version": FORMAT_VERSION,
            "extractor": self.config,
            "count": len(self.keys),
            "regions": self.regions,
            "dim": int(plan["dim"]),
        })
        shutil.rmtree(self.directory)


def _outcome(row: dict[str, Any]) -> dict[str, Any]:
    """The ``done`` entry of a finished ``images.jsonl`` row."""
    return {"error": row["error"]} if "error" in row else {"width": row["width"], "height": row["height"]}


def _read_plan(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_done(directory: Path) -> dict[int, dict[str, Any]]:
    """Rows recorded in ``done.log``; a torn last line (killed mid-write) is ignored."""
    done: dict[int, dict[str, Any]] = {}
    try:
        lines = (directory / "done.log").read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError:
        return done
    for line in lines:
        if not line.endswith("\n"):
            break
        entry = json.loads(line)
        done[entry.pop("row")] = entry
    return done
