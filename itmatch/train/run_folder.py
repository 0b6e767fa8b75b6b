"""A training run's folder: the files `itmatch train` writes there, named once for the trainer, the CLI and
`reproduce` (which reads run states)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from itmatch.fileio import FolderFormat

CONFIG, LAST, BEST, LOG = "config.toml", "last.pt", "best.pt", "log.jsonl"
#: Every file of a run (the recipe first: a run that holds only it and an empty log never trained).
RUN_FILES = (CONFIG, LAST, BEST, LOG)
#: A run folder's marker claims ``RUN_FILES``, so that no single-file output of another command replaces them.
RUN_FOLDER = FolderFormat("itmatch-run", 1)


@dataclasses.dataclass
class RunFolder:
    """The run in ``path``: ``config`` (its recipe, written at the start), ``last`` (where training stands),
    ``best`` (the model best on dev), ``log`` (one JSON line per finished epoch)."""

    path: Path
    config: Path = dataclasses.field(init=False)
    last: Path = dataclasses.field(init=False)
    best: Path = dataclasses.field(init=False)
    log: Path = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.config, self.last, self.best, self.log = (self.path / name for name in RUN_FILES)

    def existing(self) -> list[str]:
        """The run files present, in ``RUN_FILES`` order."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def epochs_logged(self) -> int:
        """How many epochs ended (the log's lines; 0 without a log)."""
        if not self.log.is_file():
            return 0
        return len([line for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()])
