"""Parameter files for tests: the project's params.yaml with some values changed.

A parameter file must hold every section and key (tcl.config), so tests start from the real
params.yaml instead of writing a partial one.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PROJECT_PARAMS", "project_params", "write_params_file"]

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _merge(data: dict, changes: dict, cls) -> None:
    hints = typing.get_type_hints(cls) if cls is not None else {}
    for key, value in changes.items():
        tp = hints.get(key)
        # Into a section (a dataclass): key by key. Anything else (clip.model, data.sources, ...) is replaced.
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict) \
                and isinstance(data.get(key), dict):
            _merge(data[key], value, tp)
        else:
            data[key] = copy.deepcopy(value)


def project_params(changes: dict | None = None) -> dict[str, Any]:
    """params.yaml as a mapping, with ``changes`` (nested like the file) merged into its sections."""
    from tcl.config import Params

    data = yaml.safe_load(PROJECT_PARAMS.read_text())
    _merge(data, changes or {}, Params)
    return data


def write_params_file(path: str | Path, changes: dict | None = None) -> Path:
    """Write :func:`project_params` of ``changes`` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(project_params(changes), sort_keys=False))
    return path
