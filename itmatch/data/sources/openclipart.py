"""Open Clip Art Library drawings (Debian ``openclipart-svg``) as extra, noisily captioned gallery pictures.

Every SVG under ``/usr/share/openclipart/svg`` (symlinked duplicates skipped) whose metadata gives a usable caption:
the drawing's ``dc:title`` and its ``dc:subject`` keywords joined by spaces, each a caption. They are noisy: titles
are often file-like names ("Aircraft3", "card") or collection names ("Lemon SVG theme"), keywords are tags, not
sentences. Use them to enlarge a training set or a search gallery, not to measure accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from itmatch.data.sources.debian import installed_version, unpacked_package

PACKAGE = "openclipart-svg"
SYSTEM_FOLDER = Path("/usr/share/openclipart/svg")
_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
_LETTER = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Drawing:
    """One drawing: ``name`` (path under the collection, no suffix), the SVG file, its captions."""

    name: str
    image: Path
    captions: tuple[str, ...]


def drawings_folder(cache: Path | None = None) -> tuple[Path, str]:
    """(folder of the SVG drawings, package version): the system install, else the package unpacked in the cache."""
    version = installed_version(PACKAGE)
    if SYSTEM_FOLDER.is_dir() and version:
        return SYSTEM_FOLDER, version
    root, version = unpacked_package(PACKAGE, cache)
    return root / "usr/share/openclipart/svg", version


def find_drawings(folder: Path) -> list[Drawing]:
    """Every captioned drawing under ``folder``, sorted by name (drawings without a usable caption are left out)."""
    drawings = []
    for path in sorted(folder.rglob("*.svg")):
        if path.is_symlink() or not path.is_file():
            continue
        captions = drawing_captions(path)
        if captions:
            drawings.append(Drawing(path.relative_to(folder).with_suffix("").as_posix(), path, captions))
    return drawings


def drawing_captions(path: Path) -> tuple[str, ...]:
    """The title and the joined keywords of a drawing's metadata (either may be missing); () if unreadable."""
    try:
        work = ElementTree.parse(path).getroot().find(".//cc:Work", _NS)
    except (ElementTree.ParseError, OSError):
        return ()
    if work is None:
        return ()
    title = _clean(work.findtext("dc:title", default="", namespaces=_NS))
    keywords: list[str] = []
    for element in work.findall("dc:subject/rdf:Bag/rdf:li", _NS):
        keyword = _clean(element.text or "")
        if keyword and keyword not in keywords:
            keywords.append(keyword)
    captions = [title] if title else []
    joined = " ".join(keywords)
    if joined and joined.lower() != title.lower():
        captions.append(joined)
    return tuple(captions)


def _clean(text: str) -> str:
    """Underscores to spaces, single spaces; empty when there is no letter at all."""
    text = " ".join(text.replace("_", " ").split())
    return text if _LETTER.search(text) else ""
