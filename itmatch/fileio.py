"""Atomic file writing and safe output folders.

Every output file is written under a temporary name in the same folder, then renamed. Every output *folder* carries
a marker (:data:`MARKER`: the folder's format, its version and the files itmatch wrote there); a command replaces or
writes into an existing folder only when it is empty or provably one that itmatch wrote in that format and holds
nothing else, and refuses otherwise: itmatch never deletes or overwrites a file it did not write. Temporary files and
folders carry the writing process's id, so a later run removes those left by a killed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from itmatch.errors import ItmatchError

#: The marker file in every folder itmatch writes.
MARKER = ".itmatch-folder.json"
#: How many folders above a file ``owning_folder`` looks for a marker (an index's seg-K/reranker-N/FIELD.npy: 3).
_OWNER_DEPTH = 4

# Temporary names: `.NAME.itmatch-HOST-PID.RANDOM.tmp` (files and folders being written), `.NAME.itmatch-old-HOST-PID`
# (a folder being replaced). Distinctive, so that no file of the user's is ever taken for one; the host, so that a
# process on another machine sharing the folder (a multi-node `torchrun`) is not taken for a dead one.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_TEMP = f"itmatch-{_HOST}-"
_STALE = re.compile(r"^\.(?P<name>.+)\.itmatch-(?P<old>old-)?(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)"
                    r"(?:\.[a-z0-9_]{8}\.tmp)?$")


@dataclasses.dataclass(frozen=True)
class FolderFormat:
    """A kind of folder itmatch writes. ``legacy`` are the (glob) paths, '/'-separated and relative, that a folder
    written before markers existed may hold, ``legacy_files`` the JSON files (with the keys each must have) of
    which such a folder must have one: only then is an unmarked folder recognised as itmatch's."""

    name: str
    version: int
    legacy: tuple[str, ...] = ()
    legacy_files: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def has_name(self, entry: str) -> bool:
        """Whether the '/'-separated relative path ``entry`` is one of the ``legacy`` names, matched part by part
        (``seg-*/features.npy`` matches no deeper file, and ``*_caps.txt`` no file in a subfolder), so that a user's
        file put into one of itmatch's subfolders is never taken for itmatch's; a pattern ending in ``/**`` (a
        scratch folder) covers everything under it."""
        return any(_matches(entry.split("/"), pattern.split("/")) for pattern in self.legacy)


def check_folder(path: str | os.PathLike, fmt: FolderFormat, option: str = "--out") -> None:
    """Raise :class:`ItmatchError` unless ``path`` may be (re)written as a ``fmt`` folder: it does not exist, is
    empty, or is a ``fmt`` folder itmatch wrote that holds only files itmatch wrote there."""
    path = Path(path)
    check_writable(path, option, in_place=True)
    if not path.exists():
        return
    if not path.is_dir():
        raise ItmatchError(f"{path}: is a file, not a folder; give {option} a new folder")
    entries = _entries(path)
    if not entries:
        return
    marker = read_marker(path)
    if marker is None:
        if _is_legacy(path, entries, fmt):
            return
        unknown = sorted(entries, key=fmt.has_name)  # the names itmatch never uses first
        raise ItmatchError(f"{path}: holds files itmatch did not write (e.g. {_first(unknown)}); give {option} a new "
                           "or empty folder (itmatch never deletes them)")
    if marker.get("format") != fmt.name:
        raise ItmatchError(f"{path}: is an itmatch {marker.get('format')} folder, not {fmt.name}; give {option} "
                           "another folder")
    claimed = [str(c) for c in marker.get("files", [])]
    foreign = [e for e in entries if not _claimed(e, claimed)]
    if foreign:
        raise ItmatchError(f"{path}: holds files itmatch did not write (e.g. {_first(foreign)}); move them away or "
                           f"give {option} a new folder (itmatch never deletes them)")


def check_outputs(outputs: dict[str, str | os.PathLike | None],
                  inputs: dict[str, Iterable[str | os.PathLike] | str | os.PathLike | None] | None = None) -> None:
    """Raise :class:`ItmatchError` before any work when an output file (option -> path; None: not given) is an
    existing folder, is the same file as another output, or as an input (option -> path or paths), or is one of the
    files of an itmatch folder (a dataset's features, an index's metadata, a run's checkpoints): writing it would
    fail late, replace what the command reads, or break that folder."""
    seen: dict[Path, str] = {}
    for option, value in outputs.items():
        if value is not None:
            check_writable(value, option)
            owner = owning_folder(value)
            if owner is not None:
                raise ItmatchError(f"{value}: is one of the files of {owner[0]}, an {owner[1]} folder; give {option} "
                                   "another file name (it would be replaced and the folder broken)")
    for option, value in (inputs or {}).items():
        for item in ([] if value is None else [value] if isinstance(value, (str, os.PathLike)) else value):
            seen.setdefault(Path(item).resolve(), option)
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            raise ItmatchError(f"{path}: is a folder; give {option} a file name")
        other = seen.get(path.resolve())
        if other is not None:
            raise ItmatchError(f"{path}: is also {other}; give {option} another file (it would be replaced)")
        seen[path.resolve()] = option


def owning_folder(path: str | os.PathLike) -> tuple[Path, str] | None:
    """The itmatch folder whose marker claims the file ``path`` (links followed), and the folder's format; None
    when no folder up to ``_OWNER_DEPTH`` levels above it claims it. A command that writes a single file must not
    write one of these: the folder's own command replaces them, and only as a whole."""
    target = Path(path).resolve()
    if _is_device(target):
        return None
    for folder in list(target.parents)[:_OWNER_DEPTH]:
        marker = read_marker(folder)
        if marker is None:
            continue
        relative = target.relative_to(folder).as_posix()
        if relative == MARKER or _claimed(relative, [str(c) for c in marker.get("files", [])]):
            return folder, str(marker.get("format"))
    return None


def check_writable(path: str | os.PathLike, option: str, in_place: bool = False) -> None:
    """Raise :class:`ItmatchError` when the output ``path`` cannot be written as the writers here write it: a
    file stands where a folder of its path should be, or the folder that gets the new file (beside ``path``, or
    beside the file a link points to) is not writable. A device is written into, so it must itself be writable;
    so must an existing folder written ``in_place`` (added to, not replaced)."""
    target = Path(path).absolute()
    if target.is_symlink():
        target = target.resolve()
    if _is_device(target) or (in_place and target.is_dir()):
        where = target
    else:
        where = target.parent
        while not where.exists():
            where = where.parent
        if not where.is_dir():
            raise ItmatchError(f"{path}: {where} is a file, not a folder; give {option} another path")
    if not os.access(where, os.W_OK | (os.X_OK if where.is_dir() else 0)):
        raise ItmatchError(f"{path}: cannot write into {where} (permission denied); give {option} a path you can "
                           "write")


def _is_device(path: Path) -> bool:
    """Whether ``path`` is a device, a pipe or a socket (``/dev/null``): written into, never replaced."""
    return path.exists() and not (path.is_file() or path.is_dir())


def user_path(path: str | os.PathLike) -> Path:
    """``path`` as the user knows it: a temporary name of :func:`atomic_path`/:func:`atomic_dir` (also inside a
    temporary folder) becomes the name it stands for."""
    parts = [(_STALE.match(part)["name"] if _STALE.match(part) else part) for part in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of the folder ``path``, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def mark_folder(path: str | os.PathLike, fmt: FolderFormat, claim: Iterable[str] = (),
                settle: Iterable[str] = ()) -> None:
    """Write the marker of the ``fmt`` folder ``path``: what it already claimed (for a folder of an older version:
    the files with ``fmt``'s names), plus ``claim`` (files or folders written or about to be; a folder covers what
    is under it). Claim a name before writing it, so that a kill in between leaves nothing unclaimed. The claims of
    the subfolders ``settle``, written by now, give way to those of the files they hold: a user's file put there
    later is then not taken for itmatch's."""
    path = Path(path)
    marker = read_marker(path)
    if marker is not None and marker.get("format") == fmt.name:
        kept = {str(c) for c in marker.get("files", [])}
    else:
        kept = {e for e in _entries(path) if fmt.has_name(e)}
    settled = {f"{folder}/{entry}" for folder in settle for entry in _entries(path / folder)}
    write_json(path / MARKER, {"format": fmt.name, "format_version": fmt.version,
                               "files": sorted((kept - set(settle)) | settled | set(claim))})


def _entries(path: Path) -> list[str]:
    """Every file under ``path`` ('/'-separated, relative; empty folders and links to folders too), but the marker
    and itmatch's temporary names."""
    found = []
    for root, dirs, files in os.walk(path):
        here = Path(root)
        rel = here.relative_to(path)
        links = [d for d in dirs if (here / d).is_symlink()]
        dirs[:] = [d for d in dirs if not _STALE.match(d) and d not in links]
        names = [n for n in files + links if not _STALE.match(n) and not (rel == Path(".") and n == MARKER)]
        found += [(rel / n).as_posix() for n in names]
        if rel != Path(".") and not names and not dirs:
            found.append(rel.as_posix())
    return sorted(found)


def _claimed(entry: str, claimed: list[str]) -> bool:
    return any(entry == c or entry.startswith(c.rstrip("/") + "/") for c in claimed)


def _is_legacy(path: Path, entries: list[str], fmt: FolderFormat) -> bool:
    """Whether an unmarked folder is one an older itmatch wrote: only ``fmt``'s names, and its JSON file says so."""
    if not fmt.legacy_files or not all(fmt.has_name(e) for e in entries):
        return False
    return any(_json_with(path / name, keys, fmt.name) for name, keys in fmt.legacy_files)


def _json_with(path: Path, keys: tuple[str, ...], fmt: str) -> bool:
    """Whether ``path`` is a JSON object with ``keys`` (and, if it names a format, ``fmt``)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and all(key in info for key in keys) and info.get("format", fmt) == fmt


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts one to one (``**`` last: anything under its folder)."""
    if pattern[-1] == "**":
        pattern = pattern[:-1]
        parts = parts[:len(pattern)] if len(parts) > len(pattern) else []
    return len(parts) == len(pattern) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern))


def _first(entries: list[str]) -> str:
    return entries[0] + (f" and {len(entries) - 1} more" if len(entries) > 1 else "")


def remove_stale(folder: Path, of: str | None = None) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` that a killed itmatch process left (their process id is
    in the name and no longer runs), only the temporary files of the output ``of`` if given; the removed paths. A
    folder being replaced whose place is still empty (the process died between moving it aside and moving the new
    one in) is put back instead."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _STALE.match(name)
        if (match is None or of not in (None, match["name"]) or (of and match["old"]) or match["host"] != _HOST
                or _running(int(match["pid"]))):
            continue
        stale = folder / name
        if match["old"] and not os.path.lexists(folder / match["name"]):
            stale.rename(folder / match["name"])
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, option: str | None = "--out") -> Iterator[None]:
    """Hold an exclusive lock on the existing folder ``path`` while a command writes it: a second itmatch
    process that writes the same folder at the same time (two `train` runs, an `index add` beside an `index
    build`) stops with one line instead of interleaving its files with the first's. An advisory ``flock`` on the
    folder itself: no lock file, and released by the system when a process dies. ``option`` names the folder in
    the message (None: a folder the user did not give, such as a cache); on a file system without ``flock`` the
    folder is written unlocked."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = f", or give {option} another folder" if option else ""
            raise ItmatchError(f"{path}: another itmatch process is writing this folder now; wait until it "
                               f"ends{other}") from None
        except OSError as exc:  # a file system without flock (e.g. some network mounts): written unlocked, as before
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _temporary(name: str) -> dict[str, str]:
    """``tempfile``'s prefix and suffix of a temporary file or folder standing for ``name``, named
    ``.NAME.itmatch-HOST-PID.RANDOM.tmp``: what ``remove_stale`` recognises once the process is gone."""
    return {"prefix": f".{name}.{_TEMP}{os.getpid()}.", "suffix": ".tmp"}


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A private folder in the system's temporary folder for the duration of the block, then removed; named like
    itmatch's other temporaries, so that ``remove_stale(Path(tempfile.gettempdir()), of=name)`` removes what a
    killed process left (e.g. a copy of an uploaded picture)."""
    folder = Path(tempfile.mkdtemp(**_temporary(name)))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed. A link is
    followed (the file it points to is replaced, the link kept); a device or a pipe (``/dev/null``) is written
    straight into, never replaced."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if _is_device(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # e.g. another user's leftover in a shared folder: not this write's concern
        remove_stale(path.parent, of=path.name)  # this output's temporary files that a killed run left
    fd, tmp = tempfile.mkstemp(**_temporary(path.name), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, fmt: FolderFormat | None = None, option: str = "--out") -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it takes the place of ``path``, on error it is
    removed: ``path`` is never half-written. With ``fmt``, ``path`` must pass :func:`check_folder` (before and once
    more just before it is replaced) and the new folder gets its marker. Stale temporary folders of killed runs
    beside ``path`` are removed first."""
    path = Path(path).absolute()
    if path.is_symlink():  # a link to a folder: the folder is what gets replaced, the link keeps pointing at it
        path = path.resolve()
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise ItmatchError(f"{path}: is the folder you are in (or holds it), which would be replaced under you; give "
                           f"{option} another folder, e.g. {option} ./out")
    if fmt is not None:
        check_folder(path, fmt, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = folder_lock(path, option) if path.is_dir() else contextlib.nullcontext()
    with held:  # no other process adds to the folder while it is replaced
        remove_stale(path.parent)
        tmp = Path(tempfile.mkdtemp(**_temporary(path.name), dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
        try:
            yield tmp
            if fmt is not None:
                mark_folder(tmp, fmt, claim=_entries(tmp))
                check_folder(path, fmt, option)
            if path.exists():
                old = path.with_name(f".{path.name}.itmatch-old-{_HOST}-{os.getpid()}")
                path.rename(old)
                try:
                    tmp.rename(path)
                except BaseException:
                    old.rename(path)  # the earlier folder back in its place
                    raise
                try:
                    shutil.rmtree(old)
                except BaseException:  # e.g. Ctrl-C after the new folder took its place: leave no hidden copy
                    shutil.rmtree(old, ignore_errors=True)
                    raise
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def new_npy(path: str | os.PathLike, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file at ``path`` of ``shape`` and ``dtype``, memory-mapped for writing, its disk space taken
    now: a full disk is an ``OSError`` (ENOSPC) here, one line in the CLI, rather than a SIGBUS that kills the
    process without a word when a write through the map meets no space."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: as before
            del array
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # named: the CLI's one line names it
    return array


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
