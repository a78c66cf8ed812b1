"""The background-threshold selection protocol (docs/evaluation.md).

``bg_thresh`` is chosen on a *training* split (``evaluate.bg_thresh_split``, ``t_*``), never on a
reported validation set: :func:`tcl.eval.sweep_bg_thresh` scores every candidate there in one pass
and the best is recorded, then used for every benchmark. Where the parameters fix the threshold
(the paper setting: ``evaluate.bg_thresh`` set), nothing is scored: the fixed value is recorded
in the same format (``"fixed": true``), so the pipeline's later stages read one file either way.
:func:`read_bg_thresh` reads a threshold back (a number, or such a record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .benchmarks import Benchmark, get_benchmark
from .config import EvalConfig

__all__ = ["ThresholdChoice", "plan_bg_thresh", "fixed_record", "read_bg_thresh"]


@dataclass(frozen=True)
class ThresholdChoice:
    """Where a run's ``bg_thresh`` comes from: nothing to choose (``split`` None: the config's value),
    a sweep of ``split`` recorded to ``record``, or the parameters' ``fixed`` value recorded as is."""

    split: Benchmark | None = None
    record: Path | None = None
    fixed: float | None = None

    @property
    def to_sweep(self) -> list[Benchmark]:
        """The split that has to be scored (none when nothing is chosen or the value is fixed)."""
        return [self.split] if self.split is not None and self.fixed is None else []

    @property
    def written(self) -> list[Path]:
        """The record file this choice writes."""
        return [self.record] if self.split is not None else []


def plan_bg_thresh(config: EvalConfig, record: Path | None, split: Benchmark | str | None = None) -> ThresholdChoice:
    """How to choose ``bg_thresh`` into ``record`` (``None``: no choice, use ``config``'s): on
    ``split`` (default ``config.bg_thresh_split``), unless ``config.bg_thresh`` fixes it.
    Raises ``ConfigError`` / ``UnknownBenchmarkError`` before anything is scored."""
    if record is None:
        return ThresholdChoice()
    bench = get_benchmark(config.bg_thresh_split if split is None else split) if not isinstance(split, Benchmark) \
        else split
    if config.bg_thresh is not None:
        return ThresholdChoice(bench, Path(record), fixed=config.bg_thresh)
    if not bench.with_background:
        raise ConfigError(f"benchmark {bench.name!r} has no background class: bg_thresh does not apply "
                          "(choose it on a training split with background, t_*)")
    return ThresholdChoice(bench, Path(record))


def fixed_record(choice: ThresholdChoice) -> dict[str, Any]:
    """The record of a fixed threshold, in the format of a sweep's (no candidates scored)."""
    return {"benchmark": choice.split.name, "candidates": {}, "best": choice.fixed, "fixed": True}


def read_bg_thresh(value: str) -> float:
    """A threshold given as a number, or as a record file (a sweep's or a fixed one: its ``best``)."""
    try:
        thresh = float(value)
    except ValueError:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--bg-thresh: {value!r} is neither a number nor a file") from None
        try:
            thresh = float(json.loads(path.read_text())["best"])
        except (OSError, ValueError, KeyError, TypeError):  # unreadable, not JSON, no or no numeric "best"
            raise ConfigError(f"--bg-thresh: {path} holds no 'best' threshold (write it with --sweep-bg-thresh)") \
                from None
    if not 0 <= thresh <= 1:
        raise ConfigError(f"--bg-thresh must be in [0, 1], got {thresh}")
    return thresh
