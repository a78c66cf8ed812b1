"""The models a benchmark run can score: a trained checkpoint, the official ``tcl.pth``, or a baseline.

Baselines (:data:`tcl.eval.config.BASELINES`) are built on a saved CLIP (the prepare_clip stage's
folder): ``step0``, the untrained TCL (its decoder gates start at 0, so this is the MaskCLIP-style
start of training), and ``maskclip``, the frozen CLIP's own dense features (official
``TCL.kp_branch``: the KP branch alone, kp_w 1, no PAMR, :func:`baseline_config`).

:func:`check_source` checks the files before anything loads; :func:`load_source` loads the model
and describes it for the results (``model`` in every metrics file). Every failure a user can cause
is a :class:`tcl.errors.TCLError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .config import BASELINES, EvalConfig

if TYPE_CHECKING:
    import torch

    from ..model import TCL, TCLConfig

__all__ = ["ModelSource", "LoadedModel", "check_source", "load_source", "baseline_config", "BASELINE_SETTINGS",
           "resolve_device"]

#: How a baseline changes the evaluation's inference settings (``step0`` changes none).
BASELINE_SETTINGS: dict[str, dict[str, Any]] = {"step0": {}, "maskclip": {"pamr": False, "kp_w": 1.0}}


@dataclass(frozen=True)
class ModelSource:
    """Which model to score: ``checkpoint`` (ours or the official ``tcl.pth``, with ``clip_weights``
    where it needs them), or ``baseline`` on the saved CLIP folder ``clip``."""

    checkpoint: Path | None = None
    clip_weights: str | None = None
    clip: Path | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.clip is None):
            raise ConfigError("give a checkpoint, or a saved CLIP folder with a baseline (not both)")
        if self.clip is not None and self.baseline not in BASELINES:
            raise ConfigError(f"a saved CLIP folder needs a baseline: one of {', '.join(BASELINES)}, "
                              f"got {self.baseline!r}")
        if self.checkpoint is not None and self.baseline is not None:
            raise ConfigError("a baseline is built on a saved CLIP folder, not on a checkpoint")


@dataclass
class LoadedModel:
    """A loaded model, its description (``info``) and the training run it came from, if recorded."""

    model: TCL
    info: dict[str, Any]
    train_run: str | None = None


def check_source(source: ModelSource, clip_model: str | dict) -> None:
    """The source's files exist (and a baseline's CLIP is ``clip_model``'s); loads nothing.
    Raises ``ConfigError``."""
    from ..checkpoint import check_saved_clip

    if source.checkpoint is not None and not source.checkpoint.is_file():
        raise ConfigError(f"checkpoint not found: {source.checkpoint} (--checkpoint: a training checkpoint or "
                          "the official tcl.pth)")
    if source.clip is not None:
        check_saved_clip(source.clip, clip_model)
    if source.clip_weights not in (None, "openai") and not Path(source.clip_weights).is_file():
        raise ConfigError(f"--clip-weights: {source.clip_weights} not found")


def load_source(source: ModelSource, model_config: TCLConfig) -> LoadedModel:
    """Load the model (on the CPU, in eval mode); ``model_config`` builds a baseline's TCL.
    Raises ``CheckpointError`` / ``WeightsError`` / ``ConfigError``."""
    from ..checkpoint import (
        CLIP_CONFIG,
        CheckpointError,
        load_model,
        load_saved_clip,
        model_from_checkpoint,
        read_checkpoint,
    )
    from ..model import TCL

    if source.checkpoint is not None:
        info = {"source": "checkpoint", "checkpoint": str(source.checkpoint)}
        try:
            payload = read_checkpoint(source.checkpoint)
        except CheckpointError:
            if not source.checkpoint.is_file():
                raise
            model = load_model(source.checkpoint, clip_weights=source.clip_weights)  # the official layout
            return LoadedModel(model.eval(), {**info, "format": "official"})
        model = model_from_checkpoint(payload, source.clip_weights, str(source.checkpoint))
        info.update(format="training", step=payload.get("step"))
        return LoadedModel(model.eval(), info, payload.get("extra", {}).get("mlflow_run_id"))
    if not (source.clip / CLIP_CONFIG).is_file():
        raise ConfigError(f"{source.clip / CLIP_CONFIG} not found: --clip takes the prepare_clip stage's output "
                          "folder")
    model = TCL(load_saved_clip(source.clip), model_config)
    return LoadedModel(model.eval(), {"source": "baseline", "baseline": source.baseline, "clip": str(source.clip)})


def baseline_config(config: EvalConfig, baseline: str | None) -> EvalConfig:
    """``config`` with a baseline's settings (:data:`BASELINE_SETTINGS`) applied; unchanged for a model."""
    return replace(config, **BASELINE_SETTINGS[baseline]) if baseline else config


def resolve_device(name: str, auto: torch.device | None = None) -> torch.device:
    """``auto`` (this process's device, ``auto``), or a torch device name (``cpu``, ``cuda:1``) that this
    machine has; else ``ConfigError``."""
    import torch

    if name == "auto" and auto is not None:
        return auto
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device: {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device: {name} is not available on this machine (CUDA devices: "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    return device
