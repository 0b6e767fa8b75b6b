"""A user's own pictures as a dataset: the manifest format and its validation.

A manifest lists pictures and their captions, paths relative to the manifest's folder:

- JSON Lines (``.jsonl``): ``{"image": "relative/path.png", "captions": ["...", ...]}`` per line;
- CSV (``.csv``): ``image,caption`` rows (an optional ``image,caption`` header), several rows per picture allowed.

:func:`read_manifest` checks every line (missing picture, undecodable picture, empty caption, picture
listed twice, malformed line) and collects all problems as ``file:line: reason``, so that they can be reported at
once; :func:`itmatch.data.sources.dataset.build_from_manifest` builds a dataset from it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from itmatch.errors import ItmatchError
from itmatch.features import UnreadableImage, load_image


@dataclass(frozen=True)
class Problem:
    """One bad manifest line: ``where`` is ``file:line``."""

    where: str
    reason: str

    def __str__(self) -> str:
        text = f"{self.where}: {self.reason}"  # may quote the manifest: its line breaks would break the listing
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class ManifestError(ItmatchError):
    """A manifest with bad lines; ``problems`` lists every one of them."""

    def __init__(self, manifest: Path, problems: Sequence[Problem],
                 fix: str = "fix them, or pass --skip-bad to build without them") -> None:
        self.problems = list(problems)
        report = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{manifest}: {len(self.problems)} bad line(s); {fix}:\n{report}")


@dataclass(frozen=True)
class Item:
    """One picture of a dataset: ``image`` (absolute path), its ``captions``, where it was listed (``source``),
    and ``key``, the stable name that decides its split (its path relative to the manifest, a stamp's name)."""

    image: Path
    captions: tuple[str, ...]
    source: str
    key: str


@dataclass
class Manifest:
    """A read manifest: the usable ``items`` (in listing order) and every ``problems`` line."""

    path: Path
    items: list[Item]
    problems: list[Problem]


def clean_caption(text: str) -> str:
    """One line, single spaces, no surrounding blanks."""
    return " ".join(text.split())


# -- reading and checking -------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike, check_images: bool = True, progress: bool = False) -> Manifest:
    """Parse a ``.jsonl`` or ``.csv`` manifest and check it; nothing is raised for bad lines (see ``problems``).

    With ``check_images`` every picture is decoded once to prove it is readable.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ItmatchError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise ItmatchError(f"{path}: is a folder; give a .jsonl or .csv manifest that lists its pictures with "
                           "their captions (docs/own-data.md)") from None
    except UnicodeDecodeError as exc:
        raise ItmatchError(f"{path}: not UTF-8 text ({exc}); save the manifest as UTF-8") from None
    problems: list[Problem] = []
    csv_rows = path.suffix.lower() == ".csv"
    if csv_rows:
        entries = _parse_csv(path, text, problems)
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        entries = _parse_jsonl(path, text, problems)
    else:
        raise ItmatchError(f"{path}: unknown manifest type; name it .jsonl (JSON Lines) or .csv (image,caption rows)")

    base = path.parent.resolve()
    by_image: dict[Path, list[tuple[int, str, list[str]]]] = {}
    for line, image, captions in entries:
        try:
            resolved = (base / image).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system, a link loop
            problems.append(Problem(f"{path}:{line}", f"not a usable picture path ({exc}); fix the path"))
            continue
        by_image.setdefault(resolved, []).append((line, image, captions))
    bad_images = _check_images(list(by_image), check_images, progress, base)

    items: list[Item] = []
    for image, lines in by_image.items():
        if image in bad_images:
            problems += [Problem(f"{path}:{line}", bad_images[image]) for line, _, _ in lines]
            continue
        captions: list[str] = []
        first_line: dict[str, int] = {}  # CSV: caption -> line that gave it
        for line, _, line_captions in lines:
            if not csv_rows and line != lines[0][0]:
                problems.append(Problem(f"{path}:{line}", f"picture already listed on line {lines[0][0]}; put all "
                                                          "its captions on one line"))
            elif csv_rows and line_captions[0] in first_line:
                problems.append(Problem(f"{path}:{line}", f"duplicate of line {first_line[line_captions[0]]} "
                                                          "(same picture and caption)"))
            else:
                first_line.setdefault(line_captions[0], line)
                captions += line_captions
        if captions:
            key = Path(os.path.relpath(image, base)).as_posix()
            items.append(Item(image, tuple(captions), f"{path.name}:{min(first_line.values())}", key))
    problems.sort(key=lambda p: int(p.where.rsplit(":", 1)[1]))
    return Manifest(path, items, problems)


def _parse_jsonl(path: Path, text: str, problems: list[Problem]) -> list[tuple[int, str, list[str]]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(where, 'expected an object {"image": "path", "captions": ["...", ...]}'))
            continue
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            problems.append(Problem(where, 'no "image" path (relative to the manifest\'s folder)'))
            continue
        captions = record.get("captions")
        if not isinstance(captions, list) or not captions:
            problems.append(Problem(where, 'no "captions": give a list of one or more sentences'))
            continue
        empty = [str(i) for i, c in enumerate(captions, start=1) if not isinstance(c, str) or not c.strip()]
        if empty:
            problems.append(Problem(where, f"empty caption (caption {', '.join(empty)} of {len(captions)})"))
            continue
        entries.append((number, image.strip(), [clean_caption(c) for c in captions]))
    return entries


def _parse_csv(path: Path, text: str, problems: list[Problem]) -> list[tuple[int, str, list[str]]]:
    entries = []
    reader = csv.reader(io.StringIO(text, newline=""))
    end_of_previous = 0
    for row in reader:
        number, end_of_previous = end_of_previous + 1, reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [cell.strip().lower() for cell in row] == ["image", "caption"]:
            continue
        where = f"{path}:{number}"
        if len(row) != 2:
            problems.append(Problem(where, f"expected 2 columns image,caption, found {len(row)} (quote a caption "
                                           'that contains commas: "a dog, running")'))
            continue
        image, caption = row[0].strip(), row[1]
        if not image:
            problems.append(Problem(where, "no image path"))
        elif not caption.strip():
            problems.append(Problem(where, "empty caption"))
        else:
            entries.append((number, image, [clean_caption(caption)]))
    return entries


def _check_images(images: list[Path], decode: bool, progress: bool, base: Path) -> dict[Path, str]:
    """Reason per unusable picture: missing, or (with ``decode``) not decodable."""
    bad: dict[Path, str] = {}
    for image in tqdm(images, desc="checking pictures", unit="img", disable=not progress or not decode):
        shown = os.path.relpath(image, base)
        try:
            found = image.is_file()
        except OSError as exc:  # e.g. a name too long for the file system
            bad[image] = f"cannot use the picture path {shown} ({exc.strerror}); fix the path"
            continue
        if not found:
            bad[image] = f"picture not found: {shown} (paths are relative to the manifest's folder)"
        elif decode:
            try:
                load_image(image)
            except UnreadableImage as exc:
                bad[image] = f"cannot decode the picture {shown}: {str(exc).split(': ', 1)[-1]}"
    return bad
