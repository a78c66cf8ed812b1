"""Package namespaces that import their submodules on first use (PEP 562 ``__getattr__``).

Why: ``tcl.config`` validates ``params.yaml`` from the configuration dataclasses that sit beside the
code they configure (``tcl/train/config.py`` beside the trainer, ...). If every package imported all
of its modules up front, reading those small modules would import torch, open_clip and mmseg; with
lazy namespaces ``python -c "import tcl.config"`` stays light and ``tcl.model.TCL`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that finds ``name`` in its submodule ``where[name]``."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f".{where[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
