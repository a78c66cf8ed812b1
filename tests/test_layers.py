"""The project's layers point only down, and no modules import each other in a cycle.

The allowed order is written once, here, in ``LAYERS`` (top to bottom). A module may import modules
of its own layer or of a layer below; every module of ``tcl/``, ``stages/`` and ``pipelines/`` must
belong to exactly one layer, so a new module has to be placed before it can be imported by anything.
Imports are read with ``ast`` (function-level imports included, ``if TYPE_CHECKING:`` blocks not);
``from package import name`` counts as an import of the submodule the package's lazy namespace
(``_WHERE``, :mod:`tcl._exports`) takes ``name`` from.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tcl", "stages", "pipelines")

#: Top to bottom. Patterns are module names (fnmatch); the first layer whose pattern matches wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("stages.train", "stages.prepare_clip", "stages.synthetic", "stages.download",
                      "stages.convert_coco_object", "stages.evaluate", "stages.report", "stages.register",
                      "pipelines.run", "pipelines.flow", "pipelines.serve", "tcl.cli")),
    ("orchestration helpers", ("stages.common", "pipelines", "pipelines.*")),
    ("configuration", ("tcl.config", "tcl.preflight")),
    ("training, evaluation, serving", ("tcl.train", "tcl.train.*", "tcl.eval", "tcl.eval.*",
                                       "tcl.serving", "tcl.serving.*")),
    ("inference", ("tcl.inference", "tcl.inference.*")),
    ("model files, compatibility, data", ("tcl.checkpoint", "tcl.compat", "tcl.compat.*", "tcl.data",
                                          "tcl.data.*")),
    ("model", ("tcl.model", "tcl.model.*")),
    ("runtime and base", ("tcl.runtime", "tcl.tracking", "tcl.tracking.*", "tcl.atomic", "tcl.serialization",
                          "tcl.visualize", "tcl.errors", "tcl._exports", "tcl")),
]
#: Packages the library must never import: orchestration belongs to pipelines/ and stages/.
ORCHESTRATORS = ("dvc", "prefect")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [p for source in SOURCES for p in (ROOT / source).rglob("*.py")]
    return {module_name(p): p for p in files}


def _lazy_names(path: Path) -> dict[str, str]:
    """A package ``__init__``'s ``_WHERE`` mapping (name → submodule), if it has one."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_WHERE" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Absolute names of what ``name`` imports (project modules resolved to the submodule used)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if candidate in modules:
                    found.add(candidate)
                elif target in modules and modules[target].name == "__init__.py" \
                        and alias.name in (lazy := _lazy_names(modules[target])):
                    found.add(f"{target}.{lazy[alias.name]}")
                else:
                    found.add(target)
    return found


def layer_of(name: str) -> int | None:
    for index, (_title, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return index
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    assert len(graph) > 80  # the walk found the project
    assert sorted(name for name in graph if layer_of(name) is None) == []


def test_imports_point_only_down(graph):
    upward = []
    for name, targets in graph.items():
        for target in targets:
            if target in graph and None not in (layer_of(name), layer_of(target)) \
                    and layer_of(target) < layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert sorted(upward) == []


def test_the_library_imports_no_orchestrator(graph):
    found = sorted(f"{name} imports {target}" for name, targets in graph.items() if name.startswith("tcl")
                   for target in targets if target.split(".")[0] in ORCHESTRATORS)
    assert found == []


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components over project modules; a component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checker_sees_violations(tmp_path):
    """The rules above fail on an upward import and a cycle (so they cannot pass vacuously)."""
    fake = {"tcl.model.a": {"tcl.train.trainer"}, "tcl.train.trainer": {"tcl.model.a"}}
    assert layer_of("tcl.model.a") > layer_of("tcl.train.trainer")
    assert any(layer_of(t) < layer_of(n) for n, ts in fake.items() for t in ts)
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dvc\ndef f():\n"
                      "    import prefect\n")
    found = imports_of("tcl.mod", source, {})
    assert "prefect" in found and "dvc" not in found
