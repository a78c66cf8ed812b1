"""Parameter overrides (``key.path=value``, as ``dvc exp run -S`` takes them), validated before anything runs.

An override replaces the value at a dotted path of ``params.yaml``; values are YAML
(``train.steps=200``, ``clip.weights=null``, ``evaluate.benchmarks=[voc, voc20]``). An overrides
file (``configs/paper.yaml``) is a YAML mapping of such dotted keys. :func:`validate_overrides`
applies them to a copy of the parameter file and checks the result with :mod:`tcl.config`, so a
typo fails in one line before any stage starts; :func:`write_overrides` then writes them into the
file through DVC's own ``-S`` code path (comments and layout kept), and :func:`to_dvc_set_args`
turns them into ``-S`` arguments for ``dvc exp run``. :func:`add_override_arguments` is the one
declaration of ``-S/--set`` for every command line that takes overrides (the stages, ``pipelines.run``,
``pipelines.flow``, ``pipelines.serve``).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tcl.errors import ConfigError

if TYPE_CHECKING:
    from tcl.config import Params

__all__ = ["Override", "add_override_arguments", "parse_overrides", "load_overrides_file", "apply_overrides",
           "validate_overrides", "write_overrides", "to_dvc_set_args", "hydra_value"]

Override = tuple[str, Any]
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
# tcl.config is imported where it is used, not here: it imports torch (seconds), and every command's
# parser imports this module for add_override_arguments, so --help and argument errors stay instant.


def add_override_arguments(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``-S/--set KEY=VALUE`` (repeatable, YAML values, as ``dvc exp run -S``) into ``args.overrides``;
    ``help_text`` words it for a command whose overrides apply to something else than this run."""
    help_text = help_text or "override one parameter for this run only, e.g. -S train.lr=0.0003 (repeatable)"
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=help_text)


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """``["train.steps=200", ...]`` → ``[("train.steps", 200), ...]`` (values parsed as YAML)."""
    from tcl.config import FLOAT_EXPONENT

    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("+")  # accept Hydra's "+key=value" spelling too
        if not sep or not _KEY.match(key):
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {key}: cannot parse value {text!r} as YAML") from None
        if isinstance(value, str) and FLOAT_EXPONENT.match(text.strip()):
            value = float(value)  # PyYAML reads 1e-5 (no dot) as a string; Hydra and everyone else: a float
        out.append((key, value))
    return out


def load_overrides_file(path: str | os.PathLike) -> list[Override]:
    """A YAML mapping of dotted keys to values (``clip.weights: openai``), in file order."""
    from tcl.config import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path, "overrides file")  # keys given twice, bad bytes, bad YAML: one line
    if not isinstance(data, dict):
        raise ConfigError(f"overrides file {path}: expected a mapping of dotted keys to values")
    for key in data:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"overrides file {path}: {key!r} is not a dotted key")
    return list(data.items())


def apply_overrides(data: dict, overrides: Iterable[Override]) -> dict:
    """A deep copy of ``data`` with each override set (intermediate mappings created as needed)."""
    data = copy.deepcopy(data)
    for key, value in overrides:
        node = data
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parents[:i + 1])} is not a mapping")
            node = child
        node[leaf] = value
    return data


def validate_overrides(params_file: str | os.PathLike, overrides: Iterable[Override] = ()) -> Params:
    """The validated parameters that ``params_file`` would hold with ``overrides``; raises ConfigError.

    The result must be complete (every section and key; :func:`tcl.config.from_dict`): a key
    missing from the file is an error naming it unless an override sets it.
    """
    from tcl.config import params_from_file, read_params_file

    return params_from_file(apply_overrides(read_params_file(params_file), overrides), params_file)


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
    from tcl.config import read_params_file

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
    from tcl.config import params_from_file, read_params_file

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
