"""Turning Python values into what MLflow accepts: flat string params, clean keys, float metrics.

MLflow rejects a whole ``log_batch`` request for one bad key or over-long value, so everything is
made valid here, before it is queued: keys keep only the characters MLflow allows, param values are
cut to MLflow's 6000-character limit, nested configs become dotted keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_KEY_LENGTH", "MAX_PARAM_VALUE_LENGTH", "MAX_TAG_VALUE_LENGTH", "MAX_PARAMS_TAGS_PER_BATCH",
           "MAX_METRICS_PER_BATCH", "clean_key", "flatten_params", "metric_value", "chunks"]

MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE_LENGTH = 8000  # MAX_TAG_VAL_LENGTH
MAX_PARAMS_TAGS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
MAX_METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH (= MAX_ENTITIES_PER_BATCH)

# Allowed by mlflow.utils.validation.validate_param_and_metric_name (colon excepted: not on Windows).
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def clean_key(key: Any) -> str:
    """A valid MLflow metric/param/tag key: bad characters become ``_``, path-like oddities (``//``,
    ``./``, ``..``, leading or trailing ``/``) are removed, and the length is capped."""
    text = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [p if p != ".." else "__" for p in text.split("/") if p not in ("", ".")]
    return "/".join(parts)[:MAX_KEY_LENGTH] or "_"


def _items(value: Any) -> Iterable[tuple[str, Any]] | None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, Mapping):
        return ((str(k), v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return ((str(i), v) for i, v in enumerate(value))
    return None


def _text(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[:MAX_PARAM_VALUE_LENGTH - 3] + "..."
    return text


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings, dataclasses, lists and tuples to ``{"a.b.0": "value"}`` with string values.

    Empty containers are kept as ``{}`` / ``[]`` so a key never silently disappears from the record.
    """
    out: dict[str, str] = {}
    items = _items(params)
    if items is None:
        out[clean_key(prefix or "value")] = _text(params)
        return out
    empty = True
    for key, value in items:
        empty = False
        out.update(flatten_params(value, f"{prefix}.{key}" if prefix else key))
    if empty and prefix:
        out[clean_key(prefix)] = "[]" if isinstance(params, list | tuple) else "{}"
    return out


def metric_value(value: Any) -> float | None:
    """``value`` as a float (Python/numpy numbers, 0-d tensors), or ``None`` when it is not a number."""
    if isinstance(value, str | bytes):
        return None
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number  # NaN/inf are kept: MLflow stores them, and a diverged loss is worth seeing


def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
