"""Model file I/O: training checkpoints, the saved CLIP, and loading a model from either.

The one module that writes or reads model files (the CLIP weights a config names are read by
:func:`tcl.model.factory.read_weights`, as open_clip's factory reads its own).

A checkpoint holds only what training changes — the masker and the two loss temperatures, not the
frozen CLIP (docs/deviations.md, *Checkpoint contents*) — plus the optimizer, the gradient scaler,
the step, every rank's data stream position, the resolved parameters, the CLIP it was trained on
(config and weights file) and the latest metrics. Everything in it is a tensor or a plain Python
value, so it loads with :func:`tcl.serialization.safe_load` (``torch.load(weights_only=True)``): no
code in a file runs. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint behind; a full disk raises :class:`tcl.atomic.DiskFullError` (the previous
checkpoint stays, the temporary file is removed).

:func:`load_model` also accepts the official ``tcl.pth`` (with the CLIP weights given separately).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_path, write_json_atomic
from .errors import ConfigError
from .model import TCL, TCLConfig, WeightsError, create_clip
from .serialization import LoadError, safe_load

__all__ = ["CheckpointError", "FORMAT", "CLIP_SEARCH_LEVELS", "trainable_state", "save_checkpoint", "read_checkpoint",
           "load_trainable_state", "model_from_checkpoint", "load_model", "save_clip", "load_saved_clip",
           "CLIP_WEIGHTS", "CLIP_CONFIG", "check_saved_clip"]

FORMAT = "tcl-training-checkpoint/1"
_FROZEN_PREFIX = "clip."
CLIP_WEIGHTS = "clip.pt"  # the prepare_clip stage's output folder: open_clip state dict ...
CLIP_CONFIG = "clip.json"  # ... and the config it was built from


class CheckpointError(LoadError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def trainable_state(model: TCL) -> dict[str, torch.Tensor]:
    """The model's state without the frozen CLIP (masker, temperatures), detached on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()
            if not key.startswith(_FROZEN_PREFIX)}


def save_checkpoint(path: str | os.PathLike, *, model: TCL, step: int, params: dict, clip: dict,
                    optimizer: torch.optim.Optimizer | None = None, scaler: dict | None = None,
                    stream: list[dict] | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically.

    ``step`` is the number of optimizer steps done; ``params`` the resolved parameter dict;
    ``clip`` ``{"model": <open_clip name or config dict>, "weights": <file>}``; ``stream`` one
    :class:`~tcl.data.stream.StreamState` dict per rank; ``extra`` small plain values (the best
    metric so far, the MLflow run id, …).
    """
    payload = {
        "format": FORMAT,
        "step": int(step),
        "model": trainable_state(model),
        "params": params,
        "clip": clip,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler,
        "stream": stream,
        "metrics": metrics or {},
        "extra": extra or {},
    }
    return _save_atomic(payload, Path(path))


def _save_atomic(payload: Any, path: Path) -> Path:
    """``torch.save(payload)`` to ``path`` atomically; a full disk is a ``DiskFullError`` naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # torch.save given a path writes in C++ and reports a full disk as a bare RuntimeError
        # ("... inline_container.cc ... unexpected pos"); through a Python file object the write's own
        # OSError (ENOSPC, EFBIG, ...) is kept and re-raised, and atomic_path names it after ``path``.
        # (Given a path, torch also names the archive's records after the file: the random temporary
        # name made every clip.pt differ; through a file object they are always "archive/".)
        writer = _ErrorKeepingWriter(handle)
        try:
            torch.save(payload, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
        handle.flush()
        os.fsync(handle.fileno())  # a full disk can also surface only here (delayed allocation, NFS)
    return path


class _ErrorKeepingWriter:
    """A binary file's ``write``/``flush`` that remembers the OSError the file raised (see save_checkpoint)."""

    def __init__(self, handle) -> None:
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights-only)."""
    payload = safe_load(path, map_location, what="checkpoint", error=CheckpointError)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a TCL training checkpoint (for the official tcl.pth use "
                              "load_model(path, clip_weights=...))")
    return payload


def load_trainable_state(model: TCL, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load :func:`trainable_state` output into ``model``; any key or shape mismatch is one error."""
    expected = {key: value.shape for key, value in model.state_dict().items() if not key.startswith(_FROZEN_PREFIX)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(key for key in set(expected) & set(state) if tuple(state[key].shape) != tuple(expected[key]))
    if missing or unexpected or mis_shaped:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(f"{source} was trained with another model config: {', '.join(problems)}; "
                              "check clip.model and model.* in params.yaml")
    model.load_state_dict(state, strict=False)


def _model_config(params: dict) -> TCLConfig:
    known = TCLConfig.__dataclass_fields__
    return TCLConfig(**{key: value for key, value in params.get("model", {}).items() if key in known})


#: How many folders, from the checkpoint's own upwards, may hold the project a relative CLIP path is
#: relative to (``<project>/models/tcl/best.pt`` is two levels below it; a DVC experiment's copy a few more).
CLIP_SEARCH_LEVELS = 5


def _clip_candidates(recorded: str, source: str) -> list[Path]:
    """Where the CLIP weights a checkpoint recorded may be: as recorded (relative to the cwd), then, for a
    relative path, relative to each folder from the checkpoint's own up :data:`CLIP_SEARCH_LEVELS` levels.

    Training records the path it was given (``models/clip/clip.pt``, relative to the project root), so
    a checkpoint loaded from another directory would otherwise not find its CLIP.
    """
    path = Path(recorded)
    candidates = [path]
    checkpoint = Path(source)
    if not path.is_absolute() and checkpoint.is_file():
        folder = checkpoint.resolve().parent
        candidates += [up / path for up in [folder, *folder.parents][:CLIP_SEARCH_LEVELS]]
    return candidates


def _clip_weights(payload: dict, clip_weights: str | os.PathLike | None, source: str) -> str:
    """The CLIP weights file to build the model with (or ``"openai"``); one-line error naming every path tried."""
    if clip_weights:  # an empty --clip-weights means "the recorded one", as before
        if str(clip_weights) == "openai" or Path(clip_weights).is_file():
            return str(clip_weights)
        raise CheckpointError(f"{source}: CLIP weights file {str(clip_weights)!r} (--clip-weights) not found")
    recorded = payload["clip"].get("weights")
    if recorded is None:
        raise CheckpointError(f"{source}: the checkpoint names no CLIP weights; pass the CLIP weights file "
                              "with --clip-weights (e.g. models/clip/clip.pt)")
    if str(recorded) == "openai":
        return "openai"
    tried = _clip_candidates(str(recorded), source)
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        unique = list(dict.fromkeys(str(path) for path in tried))
        raise CheckpointError(f"{source}: CLIP weights {str(recorded)!r} not found (tried {', '.join(unique)}); "
                              "pass the CLIP weights file with --clip-weights (e.g. models/clip/clip.pt)")
    return str(found)


def model_from_checkpoint(payload: dict, clip_weights: str | os.PathLike | None = None,
                          source: str = "checkpoint") -> TCL:
    """Rebuild the trained model: the recorded CLIP (or ``clip_weights``) plus the saved weights.

    ``source`` is the checkpoint's path: a relative recorded CLIP path that does not exist from the cwd
    is looked up relative to the project the checkpoint sits in (see :func:`_clip_candidates`).
    """
    weights = _clip_weights(payload, clip_weights, source)
    try:
        clip = create_clip(payload["clip"]["model"], weights)
    except WeightsError as err:
        raise CheckpointError(f"{source}: {err}") from None
    model = TCL(clip, _model_config(payload["params"]))
    load_trainable_state(model, payload["model"], source)
    return model.eval()


def load_model(path: str | os.PathLike, clip_weights: str | os.PathLike | None = None,
               map_location: str | torch.device = "cpu") -> TCL:
    """A TCL model in eval mode from our training checkpoint or the official ``tcl.pth``.

    Our checkpoints name the CLIP weights they were trained on (``clip_weights`` overrides it); the
    official checkpoint needs ``clip_weights`` (OpenAI's ``ViT-B-16.pt`` or ``"openai"``) unless it
    carries the CLIP keys itself.
    """
    payload = safe_load(path, map_location, what="checkpoint", error=CheckpointError)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return model_from_checkpoint(payload, clip_weights, str(path)).to(map_location)
    from .compat.official import official_model_from_state  # not ours: the official layout

    try:
        return official_model_from_state(payload, clip_weights, source=str(path)).to(map_location)
    except WeightsError as err:
        raise CheckpointError(str(err)) from None


def save_clip(directory: str | os.PathLike, clip: nn.Module, model: str | dict) -> Path:
    """Write ``clip.pt`` (an open_clip state dict) and ``clip.json`` (the config) atomically."""
    directory = Path(directory)
    _save_atomic({k: v.detach().cpu() for k, v in clip.state_dict().items()}, directory / CLIP_WEIGHTS)
    write_json_atomic(directory / CLIP_CONFIG, {"model": model})
    return directory


def load_saved_clip(directory: str | os.PathLike) -> nn.Module:
    """The CLIP that :func:`save_clip` wrote (weights-only loading), in eval mode."""
    directory = Path(directory)
    model = json.loads((directory / CLIP_CONFIG).read_text())["model"]
    return create_clip(model, directory / CLIP_WEIGHTS)


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, ...) != b.get(k, ...):
                return _first_difference(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{path}.{k}" if path else k)
    return f"{path or 'the model'}: {a!r} here, {b!r} there"


def check_saved_clip(clip_dir: str | os.PathLike, model: str | dict) -> None:
    """``clip_dir`` holds the prepare_clip output (``clip.pt``, ``clip.json``) for ``clip.model``.

    A ``clip.model`` other than the one the saved CLIP was built from would train (the CLIP is read
    from ``clip.json``) into a checkpoint recording the wrong config, which can never be loaded.
    """
    clip_dir = Path(clip_dir)
    for name in (CLIP_CONFIG, CLIP_WEIGHTS):
        if not (clip_dir / name).is_file():
            raise ConfigError(f"no CLIP at {clip_dir}: {clip_dir / name} not found; run the prepare_clip stage "
                              "first (python stages/prepare_clip.py) or pass --clip")
    try:
        saved = json.loads((clip_dir / CLIP_CONFIG).read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{clip_dir / CLIP_CONFIG}: missing or not the prepare_clip stage's config file; run "
                          "prepare_clip again (dvc repro prepare_clip)") from None
    if saved != model:
        raise ConfigError(f"clip.model: differs from {clip_dir / CLIP_CONFIG}, the CLIP that prepare_clip made "
                          f"({_first_difference(model, saved)}): run prepare_clip again (dvc repro prepare_clip) "
                          "or set clip.model back")
