"""Parameter overrides written through DVC: into ``params.yaml`` (:func:`write_overrides`) or as ``dvc exp run -S``
arguments (:func:`to_dvc_set_args`).

Parsing, applying and validating overrides (``key.path=value``, YAML values, or an overrides file
such as ``configs/paper.yaml``) is DVC-free and lives in :mod:`tcl.config`; it is re-exported here
so that the orchestration imports everything about overrides from one place.
:func:`add_override_arguments` is the one declaration of ``-S/--set`` for every command line that
takes overrides (the stages, ``pipelines.run``, ``pipelines.flow``, ``pipelines.serve``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tcl.config import (
    ConfigError,
    Override,
    Params,
    apply_overrides,
    load_overrides_file,
    params_from_file,
    parse_overrides,
    read_params_file,
    validate_overrides,
)

__all__ = ["Override", "add_override_arguments", "parse_overrides", "load_overrides_file", "apply_overrides",
           "validate_overrides", "write_overrides", "to_dvc_set_args", "hydra_value"]


def add_override_arguments(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``-S/--set KEY=VALUE`` (repeatable, YAML values, as ``dvc exp run -S``) into ``args.overrides``;
    ``help_text`` words it for a command whose overrides apply to something else than this run."""
    help_text = help_text or "override one parameter for this run only, e.g. -S train.lr=0.0003 (repeatable)"
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=help_text)


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar (what ``dvc exp run -S`` parses); strings always quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Hydra unescapes only backslashes that precede a quote or end the string.
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", k):
                raise ConfigError(f"mapping key {k!r} cannot be written as a -S override")
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"value {value!r} of type {type(value).__name__} cannot be written as a -S override")


def _has_key(data: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _hydra_overrides(params_file: Path, overrides: Iterable[Override]) -> list[str]:
    data, out = read_params_file(params_file), []
    for key, value in overrides:
        # Hydra refuses to set a key the file does not hold yet unless it is spelled "+key", and it
        # merges a mapping into the one there: delete that first ("~key") so the value is replaced.
        if not _has_key(data, key):
            out.append(f"+{key}={hydra_value(value)}")
        elif isinstance(value, dict):
            out += [f"~{key}", f"+{key}={hydra_value(value)}"]
        else:
            out.append(f"{key}={hydra_value(value)}")
    return out


def to_dvc_set_args(params_file: str | os.PathLike, overrides: Iterable[Override]) -> list[str]:
    """``["-S", "train.steps=200", ...]`` for ``dvc exp run``."""
    args = []
    for text in _hydra_overrides(Path(params_file), overrides):
        args += ["-S", text]
    return args


def write_overrides(params_file: str | os.PathLike, overrides: Iterable[Override]) -> Params:
    """Validate, then write ``overrides`` into ``params_file`` as ``dvc exp run -S`` would; returns the params."""
    params_file, overrides = Path(params_file), list(overrides)
    params = validate_overrides(params_file, overrides)
    if not overrides:
        return params
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    # Written to a copy first and checked: the file changes only if it then holds exactly ``params``.
    handle, tmp = tempfile.mkstemp(dir=params_file.parent, prefix=f".{params_file.stem}.", suffix=".yaml")
    os.close(handle)
    try:
        shutil.copyfile(params_file, tmp)
        try:
            dvc_apply_overrides(tmp, _hydra_overrides(params_file, overrides))
        except Exception as err:  # noqa: BLE001 - DVC/Hydra raise many kinds; the cause is the useful part
            cause = str(err.__cause__ or err).splitlines()[0]
            raise ConfigError(f"{params_file}: DVC could not apply the overrides ({cause})") from None
        if params_from_file(read_params_file(tmp), params_file) != params:
            raise ConfigError(f"{params_file}: DVC's -S writer changed a value of these overrides; set them by hand")
        os.replace(tmp, params_file)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return params
