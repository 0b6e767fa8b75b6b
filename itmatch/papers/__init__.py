"""The papers' published tables as data (``itmatch/papers/*.toml``) and `itmatch reproduce`, which trains each
row's variant and lays the measured numbers beside the published ones."""

from itmatch.papers.tables import Paper, Row, RunSpec, Table, list_papers, load_paper

__all__ = ["Paper", "Row", "RunSpec", "Table", "list_papers", "load_paper"]
