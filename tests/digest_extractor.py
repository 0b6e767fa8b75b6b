"""A cheap deterministic extractor for the distributed extraction tests, and a launcher of the `itmatch` CLI with
it registered: ``python tests/digest_extractor.py extract ... --extractor digest`` (also under ``torchrun``).

``digest`` gives each picture R × 16 features drawn from a generator seeded by the CRC of the file's bytes, so
the result depends on the picture alone. ``DIGEST_KILL_RANK``/``DIGEST_KILL_AFTER`` make that process SIGKILL
itself when it is about to extract its picture number ``DIGEST_KILL_AFTER`` + 1 (a crash mid-run).
"""

from __future__ import annotations

import os
import signal
import sys
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from itmatch.features import Regions, register_extractor

DIM = 16


class DigestExtractor:
    """Features from a hash of the file (see the module docstring)."""

    name = "digest"

    def __init__(self, regions: int = 36) -> None:
        self.regions = regions
        self.seen = 0

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "regions": self.regions, "dim": DIM}

    def extract(self, paths: Sequence[Path]) -> list[Regions]:
        out = []
        for path in paths:
            if os.environ.get("RANK", "0") == os.environ.get("DIGEST_KILL_RANK") and \
                    self.seen >= int(os.environ["DIGEST_KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
            self.seen += 1
            data = Path(path).read_bytes()
            rng = np.random.default_rng(zlib.crc32(data))
            out.append(Regions(features=rng.standard_normal((self.regions, DIM)).astype(np.float32),
                               boxes=np.sort(rng.random((self.regions, 4)), axis=1).astype(np.float32),
                               labels=rng.integers(-1, 90, self.regions).astype(np.int32),
                               scores=rng.random(self.regions).astype(np.float32),
                               width=len(data), height=len(data) % 97 + 1))
        return out


@register_extractor("digest")
def digest(regions: int = 36) -> DigestExtractor:
    return DigestExtractor(regions)


if __name__ == "__main__":
    from itmatch.cli import main

    sys.exit(main(sys.argv[1:]))
