"""The package's layering (docs/architecture.md) holds: no import circles, no upward imports, and the optional
dependencies stay out of the core (importing a model never imports FastAPI, OpenCV or matplotlib).

The import graph is read from the source with ``ast``: every ``import``/``from ... import`` of an ``itmatch`` module,
at module level or inside a function (a lazy import is still a dependency), except under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "itmatch"

#: Lowest first; a module may import its own layer and the layers below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("itmatch.errors", "itmatch.fields", "itmatch.fileio", "itmatch.metrics", "itmatch.protocols", "itmatch.losses",
     "itmatch.distributed"),
    ("itmatch.data", "itmatch.features"),
    ("itmatch.models",),
    ("itmatch.checkpoint", "itmatch.release", "itmatch.loading", "itmatch.scoring"),
    ("itmatch.evaluate", "itmatch.embeddings", "itmatch.train", "itmatch.papers"),
    ("itmatch.search", "itmatch.viz", "itmatch.demo"),
    ("itmatch.serve",),
    ("itmatch.cli", "itmatch.__main__"),
]
#: Imported only by the commands and the service that need them (the extras of pyproject.toml).
OPTIONAL = ("fastapi", "starlette", "uvicorn", "cv2", "matplotlib", "transformers", "faiss", "pyarrow", "cairosvg")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``itmatch`` modules that module ``name`` imports (``from a.b import c``: ``a.b.c`` if it is a module,
    else ``a.b``), skipping ``if TYPE_CHECKING`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "itmatch"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] == "itmatch":
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_analysis_sees_imports_and_circles() -> None:
    graph = import_graph()
    assert {"itmatch.models.region_word", "itmatch.models.registry"} <= graph["itmatch.models.sgraf"]
    assert "itmatch.models.sgraf" in graph["itmatch.models"]
    assert "itmatch.loading" in graph["itmatch.search.index"]  # a lazy import inside a function counts
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in module_files() if m != "itmatch" and layer_of(m) is None] == []


def test_no_upward_imports() -> None:
    """``itmatch`` itself (the public facade) may import anything; nothing imports the facade."""
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() if module != "itmatch"
              for target in targets if target == "itmatch" or layer_of(target) > layer_of(module)]
    assert upward == []


def test_models_never_import_search_serve_cli_or_training() -> None:
    graph = import_graph()
    above = ("itmatch.search", "itmatch.serve", "itmatch.cli", "itmatch.train", "itmatch.evaluate", "itmatch.demo")
    assert [f"{m} -> {t}" for m, targets in graph.items() if m.startswith("itmatch.models")
            for t in targets if t.startswith(above)] == []


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=120)


@pytest.mark.parametrize("module", ["itmatch.models", "itmatch", "itmatch.evaluate", "itmatch.train", "itmatch.cli"])
def test_the_core_imports_no_optional_dependency(module: str) -> None:
    """In a fresh interpreter: importing the module loads none of the extras' packages."""
    result = run_fresh(f"""
        import sys
        import {module}
        print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_names_spelled_out_to_keep_opencv_away_are_the_features_packages() -> None:
    """The CLI and the gallery write these names out so as not to import OpenCV where it is not needed."""
    from itmatch.cli.options import DEFAULT_EXTRACTOR
    from itmatch.features import DEFAULT_EXTRACTOR as FEATURES_DEFAULT
    from itmatch.features.store import INFO_FILE, PARTIAL
    from itmatch.search.gallery import FEATURES_INFO, FEATURES_PARTIAL

    assert DEFAULT_EXTRACTOR == FEATURES_DEFAULT and (FEATURES_INFO, FEATURES_PARTIAL) == (INFO_FILE, PARTIAL)


def test_the_core_runs_without_the_extras(tmp_path) -> None:
    """With every optional package made unimportable, the CLI lists models and evaluates a score matrix; a
    command that needs an extra says which one to install."""
    result = run_fresh(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # `import name` now fails as if it were not installed
        import numpy as np
        from itmatch.cli import main
        assert main(["models"]) == 0
        np.save({str(tmp_path / 'sims.npy')!r}, np.eye(3, 15, dtype=np.float32))
        print("evaluate", main(["evaluate", "--sims", {str(tmp_path / 'sims.npy')!r}]))
        print("serve", main(["serve", "--index", {str(tmp_path / 'index')!r}]))
    """)
    assert result.returncode == 0, result.stderr
    assert "evaluate 0" in result.stdout and "serve 2" in result.stdout
    # `serve` needs uvicorn first; its extra brings FAISS ([search]) too
    assert "error: this command needs uvicorn, which is not installed: pip install 'itmatch[serve]'" in result.stderr
