"""``params.yaml`` → validated, typed configuration objects; overrides of it (``key.path=value``).

Configuration flows one way: the YAML file is parsed once, checked against dataclasses before any
work starts, and the resulting frozen objects are passed to functions. Each section is a frozen
dataclass defined beside the code it configures, in a torch-free module, that checks its own values
in ``__post_init__`` with :func:`tcl.errors.require` (so a section built in code is checked too):

* ``clip``, ``model``: :mod:`tcl.model.config` (``ClipSettings``, ``TCLConfig``)
* ``data``, ``download``: :mod:`tcl.data.config` (``StreamConfig``, ``DownloadConfig``)
* ``prepare_clip``, ``train``: :mod:`tcl.train.config` (``ClipPretrainConfig``, ``TrainConfig``)
* ``evaluate``: :mod:`tcl.eval.config` (``EvalConfig``)
* ``synthetic``: :mod:`tcl.data.synthetic.config` (``SyntheticParams``)
* ``pipeline``: here (:class:`PipelineConfig`), the one section defined in this module, as it configures only
  the orchestration (``stages/``, ``pipelines/``), which sits above it.

This module composes them (:class:`Params`) and loads them (:func:`from_dict`: unknown keys, wrong
types, missing keys; a section's own error gets the dotted section path in front), so importing it
loads no torch, open_clip, webdataset or mmseg. Overrides (as ``dvc exp run -S`` takes them) are
applied here too (:func:`parse_overrides`, :func:`apply_overrides`, :func:`validate_overrides`);
writing them into the file through DVC lives in ``pipelines/overrides.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import math
import os
import re
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.config import STAGE_NAME, CocoObjectConversion, DownloadConfig, StreamConfig
from .data.synthetic.config import SyntheticParams
from .errors import ConfigError, require
from .eval.config import BASELINES, EvalConfig
from .model.config import ClipSettings, TCLConfig
from .train.config import ClipPretrainConfig, TrainConfig

__all__ = ["ConfigError", "ClipSettings", "PipelineConfig", "gpu_count", "Params", "load_params", "read_params_file",
           "read_yaml_file", "from_dict", "params_from_file", "UniqueKeyLoader", "DuplicateKeyError",
           "FLOAT_EXPONENT", "Override", "parse_overrides", "load_overrides_file", "apply_overrides",
           "validate_overrides"]


#: A float written with an exponent but no dot (``1e-05``): YAML 1.2 and Hydra read a number, PyYAML a string.
FLOAT_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


# Linux shows a CUDA GPU as /dev/nvidia<N>, a ROCm one through /dev/kfd and WSL's through /dev/dxg.
_GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def gpu_count() -> int:
    """This machine's GPU count as torch sees it (``torch.cuda.device_count()``).

    On Linux without any GPU device node torch would count 0, so the answer is 0 without importing
    torch: that import takes 2–3 s, and the train stage asks this before torchrun starts.
    """
    if sys.platform == "linux" and not any(glob.glob(pattern) for pattern in _GPU_DEVICE_NODES):
        return 0
    import torch  # only here: reading the configuration must not need torch

    return torch.cuda.device_count()


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages are chained and recorded (``pipeline:``; ``dvc.yaml``, ``pipelines/``, MLflow).

    The one section defined here: no library code reads it, only the orchestration (``stages/``,
    ``pipelines/``), which sits above this module.
    """

    experiment: str = "tcl"  # MLflow experiment of the pipeline's parent run (stage runs nest under it)
    # torchrun processes of the train stage: a number, or "auto" = this machine's GPU count (1 without a GPU;
    # torchrun's own "auto" would start one process per CPU core there). See local_world_size().
    nproc_per_node: int | str = "auto"
    baselines: tuple[str, ...] = BASELINES  # stage baseline@<benchmark>-<baseline> each
    coco_object: dict[str, CocoObjectConversion] = field(default_factory=dict)  # convert_coco_object@<name>
    register_name: str = "tcl"  # MLflow registered model that the final checkpoint becomes a version of
    register_alias: str = "champion"  # alias moved to the newest registered version

    def local_world_size(self, gpus: int | None = None) -> int:
        """The number of train processes on this machine: ``nproc_per_node``, or for ``auto`` the GPU count
        (``gpus``, else :func:`gpu_count`), at least 1."""
        if self.nproc_per_node != "auto":
            return int(self.nproc_per_node)
        return max(1, gpu_count() if gpus is None else gpus)

    def __post_init__(self) -> None:
        require(bool(self.experiment), "experiment", "must be set")
        require(self.nproc_per_node == "auto" if isinstance(self.nproc_per_node, str) else self.nproc_per_node >= 1,
                "nproc_per_node", "must be >= 1 or auto (the machine's GPU count)", self.nproc_per_node)
        require(bool(self.baselines) and all(b in BASELINES for b in self.baselines)
                and len(set(self.baselines)) == len(self.baselines), "baselines",
                f"one or both of {', '.join(BASELINES)} (the report compares the trained model with them), "
                f"each once, got {list(self.baselines)}")
        for name in self.coco_object:
            require(bool(STAGE_NAME.match(name)), f"coco_object.{name}",
                    "names may hold only letters, digits, '_' and '-'")
        require(bool(STAGE_NAME.match(self.register_name)), "register_name", "letters, digits, '_' and '-' only",
                self.register_name)
        require(bool(_ALIAS.match(self.register_alias)) and self.register_alias.lower() != "latest",
                "register_alias", "a name like 'champion' (not 'latest')", self.register_alias)


@dataclass(frozen=True)
class Params:
    """Every section of ``params.yaml`` (see the module docstring for where each is defined)."""

    clip: ClipSettings = field(default_factory=ClipSettings)
    model: TCLConfig = field(default_factory=TCLConfig)
    data: StreamConfig = field(default_factory=StreamConfig)
    prepare_clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_finite(value: float, key: str) -> float:
    # YAML reads .inf and .nan as floats (and 1e999 overflows to inf): no setting means either.
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return value


def _coerce(value: Any, tp, key: str, required_in: str | None = None) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(value, float):
        _check_finite(value, key)  # before a Union tries its options: the reason would be lost
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, required_in)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(t) for t in typing.get_args(tp))}, "
                          f"got {type(value).__name__} {value!r}")
    if origin is tuple:
        if isinstance(value, list | tuple):
            (item_type, _ellipsis) = typing.get_args(tp)
            return tuple(_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
    if origin is dict:  # a mapping of user-chosen names to values of one type (download.sources)
        if isinstance(value, dict):
            (_key_type, item_type) = typing.get_args(tp)
            return {str(k): _coerce(item, item_type, f"{key}.{k}") for k, item in value.items()}
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, key, required_in=required_in)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _check_finite(float(value), key)
        if isinstance(value, str) and FLOAT_EXPONENT.match(value):
            # YAML 1.1 reads 1e-05 (what `dvc exp run -S` writes) as a string
            return _check_finite(float(value), key)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool, dict):
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - a dataclass field of a type this loader does not know
        raise TypeError(f"unsupported config type {tp} at {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls, data: dict, prefix: str = "", *, required_in: str | None = None):
    """Build dataclass ``cls`` from ``data``, validating keys, types and value ranges.

    Fields missing from ``data`` take the dataclass defaults (configs built in code), unless
    ``required_in`` names the file ``data`` was read from: then every field of ``cls`` and of its
    nested sections must be there, so that the file, not the code, holds the values a run uses.
    Entries of user-named collections (``data.sources[i]``, ``download.sources.<name>``) have no
    counterpart in the file to default from: their optional fields keep the documented defaults.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key {where!r} (known keys here: {', '.join(sorted(known))})")
    if required_in is not None:
        for name in known:
            if name not in data:
                where = f"{prefix}.{name}" if prefix else name
                raise ConfigError(f"{where}: missing from {required_in} (every key must be set there; the "
                                  "project's params.yaml lists them all)")
    values = {}
    for name, raw in data.items():
        key = f"{prefix}.{name}" if prefix else name
        # Items of lists and user-named mappings are collection entries (see the docstring).
        collection = typing.get_origin(hints[name]) in (tuple, dict)
        values[name] = _coerce(raw, hints[name], key, None if collection else required_in)
    try:
        return cls(**values)
    except ConfigError as err:
        # The section's __post_init__ names the field (``steps: ...``): put the section's path in front.
        raise ConfigError(f"{prefix}.{err}" if prefix else str(err)) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping key given twice is an error (PyYAML keeps the last).

    Raises :class:`DuplicateKeyError` naming the dotted key and both lines.
    """

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", set())
        return self.construct_document(node)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping key given twice; ``key`` is its dotted path, ``first`` and ``second`` the lines."""

    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(f"{key} given twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


def _check_unique_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: checked where its anchor is (and no endless loop on recursive ones)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = key_node.value, key_node.start_mark.line + 1
                dotted = f"{path}.{key}" if path else key
                if key in lines:
                    raise DuplicateKeyError(dotted, lines[key], line)
                lines[key] = line
                _check_unique_keys(value_node, dotted, seen)
            else:
                _check_unique_keys(value_node, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", seen)


def read_yaml_file(path: str | os.PathLike, what: str = "parameter file") -> Any:
    """The YAML document of ``path`` (``None`` when empty); every problem is a one-line ConfigError.

    Missing or unreadable files, bytes that are not UTF-8, YAML syntax errors and keys given twice
    (at any level) are refused, each naming the file and, where there is one, the line or the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot read it ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at line {line}); "
                          "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err.key} given twice (lines {err.first} and {err.second}); keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def read_params_file(path: str | os.PathLike) -> dict:
    """The raw mapping of a parameter file; a missing, empty or malformed file is a one-line ConfigError."""
    data = read_yaml_file(path)
    if data is None:
        sections = ", ".join(f.name for f in dataclasses.fields(Params))
        raise ConfigError(f"{path}: empty; a parameter file holds every section ({sections}): start from the "
                          "project's params.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (clip, model, ...), got {type(data).__name__}")
    return data


def params_from_file(data: dict, path: str | os.PathLike) -> Params:
    """Validated :class:`Params` of the mapping read from ``path``: every section and key must be given."""
    return from_dict(Params, data, required_in=Path(path).name)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a parameter file (with overrides: :func:`validate_overrides`)."""
    return params_from_file(read_params_file(path), path)


# --------------------------------------------------------------------------- overrides

Override = tuple[str, Any]
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """``["train.steps=200", ...]`` → ``[("train.steps", 200), ...]`` (values parsed as YAML)."""
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

    The result must be complete (every section and key; :func:`from_dict`): a key missing from the
    file is an error naming it unless an override sets it.
    """
    return params_from_file(apply_overrides(read_params_file(params_file), overrides), params_file)
