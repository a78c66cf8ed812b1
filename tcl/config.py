"""``params.yaml`` → validated, typed configuration objects.

Configuration flows one way: the YAML file is parsed once, checked against dataclasses before any
work starts, and the resulting frozen objects are passed to functions. Unknown keys, wrong types and
impossible values raise :class:`ConfigError` with a one-line message that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.stream import AUGMENTATIONS, StreamConfig
from .data.synthetic import SyntheticParams
from .errors import ConfigError
from .eval.benchmarks import BENCHMARKS
from .eval.config import PRECISIONS as EVAL_PRECISIONS
from .eval.config import SETTINGS as EVAL_SETTINGS
from .eval.config import EvalConfig
from .model.tcl import TCLConfig
from .model.templates import TEMPLATES
from .pipeline.config import DownloadConfig, PipelineConfig
from .runtime import PRECISIONS
from .train.clip_pretraining import ClipPretrainConfig
from .train.trainer import TrainConfig

__all__ = ["ConfigError", "ClipSettings", "Params", "load_params", "read_params_file", "read_yaml_file", "from_dict",
           "params_from_file", "UniqueKeyLoader", "DuplicateKeyError", "FLOAT_EXPONENT"]


#: A float written with an exponent but no dot (``1e-05``): YAML 1.2 and Hydra read a number, PyYAML a string.
FLOAT_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class ClipSettings:
    """Which CLIP TCL is built on.

    ``model``: an open_clip config name (``ViT-B-16-quickgelu``, the paper) or a config dict with
    ``embed_dim``, ``vision_cfg``, ``text_cfg`` (a tiny CLIP). ``weights``: ``None`` (to be trained
    by the prepare_clip stage), ``"openai"`` (download) or a weights file.
    """

    model: str | dict = "ViT-B-16-quickgelu"
    weights: str | None = None

    def validate(self) -> ClipSettings:
        if isinstance(self.model, dict):
            from .model.factory import check_clip_config

            try:
                check_clip_config(self.model)
            except ValueError as err:
                raise ValueError(f"model.{err}") from None
        elif not self.model:
            raise ValueError("model: must be set (an open_clip config name or a config dict)")
        if self.weights == "":
            raise ValueError("weights: must be null, 'openai' or a weights file, got ''")
        if self.weights == "openai" and isinstance(self.model, dict):
            # open_clip would build its own ViT-B/16, not this dict, and the checkpoint would record the dict
            raise ValueError("weights: 'openai' goes with an open_clip config name (ViT-B-16-quickgelu), "
                             "not a config dict")
        return self


@dataclass(frozen=True)
class Params:
    clip: ClipSettings = field(default_factory=ClipSettings)
    model: TCLConfig = field(default_factory=TCLConfig)
    data: StreamConfig = field(default_factory=StreamConfig)
    prepare_clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def _at_least(low: float):
    return (lambda v: v >= low, f"must be >= {low}")


def _above(low: float):
    return (lambda v: v > low, f"must be > {low}")


_CHECKS = {
    "model.ie_freeze": _at_least(1),
    "model.decoder_stages": _at_least(0),
    "model.gumbel_tau": _above(0),
    "model.text_chunk_size": _at_least(1),
    "model.tcl_w": _at_least(0),
    "model.area_w": _at_least(0),
    "model.tv_w": _at_least(0),
    "data.batch_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "data.shuffle_buffer": _at_least(1),
    "data.shuffle_initial": _at_least(1),
    "data.image_size": _at_least(16),
    "data.augment": (lambda v: v in AUGMENTATIONS, f"must be one of {', '.join(AUGMENTATIONS)}"),
    "data.crop_scale_min": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "data.context_length": _at_least(2),
    "prepare_clip.steps": _at_least(1),
    "prepare_clip.lr": _above(0),
    "prepare_clip.min_lr": _at_least(0),
    "prepare_clip.warmup_steps": _at_least(0),
    "prepare_clip.weight_decay": _at_least(0),
    "prepare_clip.grad_clip": _above(0),
    "prepare_clip.log_every": _at_least(1),
    "evaluate.setting": (lambda v: v in EVAL_SETTINGS, f"must be one of {', '.join(EVAL_SETTINGS)}"),
    "evaluate.bg_thresh": (lambda v: v is None or 0 <= v <= 1, "must be in [0, 1] (or null: the setting's)"),
    "evaluate.kp_w": (lambda v: v is None or 0 <= v <= 1, "must be in [0, 1] (or null: the setting's)"),
    "evaluate.template": (lambda v: v is None or v in TEMPLATES, f"must be one of {', '.join(TEMPLATES)}"),
    "evaluate.benchmarks": (lambda v: all(b in BENCHMARKS for b in v), f"must name known benchmarks "
                            f"({', '.join(BENCHMARKS)})"),
    "evaluate.bg_thresh_split": (lambda v: v in BENCHMARKS and BENCHMARKS[v].with_background,
                                 "must be a known benchmark with a background class (a training split, t_*)"),
    "evaluate.bg_thresh_candidates": (lambda v: len(v) > 0 and all(0 <= t <= 1 for t in v),
                                      "must be a non-empty list of values in [0, 1]"),
    "evaluate.window_batch": _at_least(1),
    "evaluate.image_batch": _at_least(1),
    "evaluate.num_workers": _at_least(0),
    "evaluate.precision": (lambda v: v in EVAL_PRECISIONS, f"must be one of {', '.join(EVAL_PRECISIONS)}"),
    "evaluate.overlays": _at_least(0),
    **{f"evaluate.protocols.{name}.{key}": _at_least(1) for name in ("paper", "synthetic")
       for key in ("short_side", "long_side", "crop", "stride")},
    "train.steps": _at_least(1),
    "train.ust_steps": _at_least(0),
    "train.lr": _above(0),
    "train.min_lr": _at_least(0),
    "train.warmup_steps": _at_least(0),
    "train.weight_decay": _at_least(0),
    "train.adam_eps": _above(0),
    "train.grad_clip": _above(0),
    "train.grad_accum": _at_least(1),
    "train.precision": (lambda v: v in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
    "train.log_every": _at_least(1),
    "train.image_every": _at_least(0),
    "train.checkpoint_every": _at_least(1),
    "train.val_every": _at_least(0),
    "train.max_nonfinite": _at_least(1),
    "train.val_benchmarks": (lambda v: all(b in BENCHMARKS for b in v),
                             f"must name known benchmarks ({', '.join(BENCHMARKS)})"),
}


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
        value = _coerce(raw, hints[name], key, None if collection else required_in)
        check = _CHECKS.get(key)
        if check and not check[0](value):
            raise ConfigError(f"{key}: {check[1]}, got {value!r}")
        values[name] = value
    built = cls(**values)
    # Checks across fields (or over a section's own names) live in the section's ``validate`` method,
    # which raises ``ValueError("<field>...")``: prefix the section path so the message names the key.
    if callable(getattr(built, "validate", None)):
        try:
            built.validate()
        except ValueError as err:
            raise ConfigError(f"{prefix}.{err}" if prefix else str(err)) from None
    return built


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
    """Read and validate a parameter file (with overrides: :func:`pipelines.overrides.validate_overrides`)."""
    return params_from_file(read_params_file(path), path)
