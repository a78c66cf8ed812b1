"""The library (tcl/) imports neither DVC nor Prefect (type-only imports under ``if TYPE_CHECKING:`` aside):
orchestration reaches it only through arguments and the environment (e.g. the Prefect flow-run id)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "tcl"
FORBIDDEN = ("dvc", "prefect")


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []  # type-only: never executed
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_library_imports_neither_dvc_nor_prefect():
    found = sorted(f"{path.relative_to(LIBRARY.parent)}: {name}" for path in LIBRARY.rglob("*.py")
                   for name in _imports(ast.parse(path.read_text()))
                   if name.split(".")[0] in FORBIDDEN)
    assert found == []
