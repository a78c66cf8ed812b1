"""The paper setting's preparation as docs/data.md gives it: mmseg's converters where the commands look for
them, and every third-party module they import installed, in the ``paper`` extra, or installed by a command
the page gives."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from .conftest import REPO

DOC = (REPO / "docs/data.md").read_text()
#: What a converter imports that neither the project's dependencies nor the standard library provide:
#: import name → ("extra", requirement of the ``paper`` extra) or ("doc", the pip argument docs/data.md gives).
PROVIDERS = {"detail": ("doc", "'git+https://github.com/zhanghang1989/detail-api.git#subdirectory=PythonAPI'"),
             "cityscapesscripts": ("extra", "cityscapesscripts")}


def _tools_dir() -> Path:
    [snippet] = re.findall(r'MMSEG_TOOLS="\$\(python -c \'(.+?)\'\)"', DOC)
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def _imports(script: Path) -> set[str]:
    tree = ast.parse(script.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name.split(".")[0] for name in names}


def test_the_documented_converters_exist_and_their_imports_are_provided():
    tools = _tools_dir()
    scripts = re.findall(r'python "\$MMSEG_TOOLS/(\w+\.py)"', DOC)
    assert sorted(scripts) == ["cityscapes.py", "coco_stuff164k.py", "pascal_context.py"]
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["paper"]
    for name in scripts:
        assert (tools / name).is_file(), f"{tools / name} missing: the docs' command would fail"
        for module in _imports(tools / name):
            if module in sys.stdlib_module_names or _importable(module):
                continue
            assert module in PROVIDERS, f"{name} imports {module}, which nothing installs"
            where, what = PROVIDERS[module]
            if where == "extra":
                assert any(re.match(rf"{what}\b", req) for req in extra), f"{what} not in the paper extra"
            else:
                assert f".venv/bin/pip install cython {what}" in DOC, f"docs/data.md does not install {module}"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
