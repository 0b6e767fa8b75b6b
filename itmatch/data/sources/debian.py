"""Debian data packages, unpacked without root into itmatch's cache.

``apt-get download NAME`` fetches the ``.deb`` (no root needed) and ``dpkg-deb -x`` unpacks it into
``$ITMATCH_CACHE/debian/NAME/`` (default cache ``~/.cache/itmatch``), with a ``VERSION`` file written last to mark it
complete -- the same layout ``scripts/install_system_deps.sh`` makes, so either can fill the cache for the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from itmatch.errors import ItmatchError


def cache_dir() -> Path:
    """itmatch's cache folder: ``$ITMATCH_CACHE`` or ``~/.cache/itmatch``."""
    return Path(os.environ.get("ITMATCH_CACHE") or Path.home() / ".cache" / "itmatch")


def installed_version(package: str) -> str | None:
    """The version of ``package`` installed system-wide (dpkg), or None."""
    if shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Version}", package], check=False, capture_output=True,
                          text=True)
    status, _, version = done.stdout.partition("|")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def unpacked_package(package: str, cache: Path | None = None) -> tuple[Path, str]:
    """(root of the unpacked tree, version) of ``package`` in the cache, downloading and unpacking it if needed."""
    folder = (cache or cache_dir()) / "debian"
    dest = folder / package
    if (dest / "VERSION").is_file():
        return dest, (dest / "VERSION").read_text(encoding="utf-8").strip()
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ItmatchError(
                f"{package}: not in the cache {dest} and `{tool}` is missing (not a Debian-like system); unpack the "
                f"package's .deb there with `dpkg-deb -x` and write its version to {dest / 'VERSION'}"
            )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=folder) as tmp:
        work = Path(tmp)
        download = ["apt-get", "download", "-qq", package]
        if os.geteuid() == 0:  # root: apt would hand the download to the _apt user, who cannot write here
            download[1:1] = ["-o", "APT::Sandbox::User=root"]
        done = subprocess.run(download, check=False, cwd=work, capture_output=True, text=True)
        debs = sorted(work.glob("*.deb"))
        if done.returncode != 0 or not debs:
            raise ItmatchError(
                f"{package}: `apt-get download {package}` failed ({(done.stderr or done.stdout).strip()}); run "
                "`apt-get update` (as root) or scripts/install_system_deps.sh, then retry"
            )
        root = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
        version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        (root / "VERSION").write_text(version + "\n", encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        root.rename(dest)
    return dest, version
