"""The inference settings a model was evaluated with, recorded next to it, and found again for a checkpoint.

The pipeline scores its model with the evaluation's settings (``evaluate`` in params.yaml: the
template, the background threshold the ``bg_thresh`` stage chose, the protocol's window geometry,
sliding windows), not with :data:`~tcl.inference.settings.DEFAULT_SETTINGS`. The ``register`` stage
writes them as a *settings record* (:func:`settings_record`) into the registered model's config and
into ``metrics/registered.json``, with the checkpoint's MD5, so that ``tcl predict`` and
``tcl serve-demo`` given that checkpoint use them (:func:`recorded_for_checkpoint`): a checkpoint
whose bytes differ from the registered one (a later ``dvc exp run`` replaced it) gets no settings
it was not evaluated with.

Torch-free, like :mod:`tcl.inference.settings`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .settings import InferenceSettings

__all__ = ["RecordedSettings", "settings_record", "settings_from_record", "file_md5", "recorded_for_checkpoint",
           "describe_settings", "default_settings", "REGISTERED_RECORD"]

#: Where the register stage writes its record, relative to the project root (dvc.yaml).
REGISTERED_RECORD = Path("metrics/registered.json")


@dataclass(frozen=True)
class RecordedSettings:
    """Settings to run a model with, ``sliding`` windows or not, and where they came from (``source``,
    one phrase for the user: ``metrics/registered.json (tcl version 3)``, ``the defaults``, ...)."""

    settings: InferenceSettings
    sliding: bool
    source: str


def settings_record(settings: InferenceSettings, sliding: bool, **origin: Any) -> dict[str, Any]:
    """The JSON-able record of ``settings`` (every field) and ``sliding``, plus ``origin`` (free
    keys: where the threshold came from, the protocol, the checkpoint's MD5, ...)."""
    return {"settings": dataclasses.asdict(settings), "sliding": bool(sliding), **origin}


def settings_from_record(record: Any, where: str) -> tuple[InferenceSettings, bool]:
    """The settings and ``sliding`` of a :func:`settings_record`; ``ConfigError`` naming ``where``
    when it is not one (missing or unknown fields, values out of range)."""
    fields = {f.name for f in dataclasses.fields(InferenceSettings)}
    values = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(values, dict) or set(values) - fields or not isinstance(record.get("sliding", False), bool):
        raise ConfigError(f"{where}: not a settings record (expected {{'settings': {{{', '.join(sorted(fields))}}}, "
                          "'sliding': bool}); rerun the register stage (dvc repro register)")
    try:
        return InferenceSettings(**values), record.get("sliding", False)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes (as DVC records them), read in chunks so a large checkpoint is not held in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _candidate_records(checkpoint: Path) -> list[Path]:
    """The register stage's record in the current folder (the project root, as ``make`` and DVC run)
    and in the project that holds the checkpoint (``<root>/models/tcl/best.pt``)."""
    candidates = [REGISTERED_RECORD.resolve()]
    parents = checkpoint.resolve().parents
    if len(parents) > 2:
        candidates.append(parents[2] / REGISTERED_RECORD)
    return list(dict.fromkeys(candidates))


def recorded_for_checkpoint(checkpoint: str | os.PathLike) -> tuple[RecordedSettings | None, str]:
    """The settings the register stage recorded for exactly this checkpoint file (same MD5), or
    ``None``; with one phrase saying why none apply (empty when found)."""
    checkpoint = Path(checkpoint)
    why = f"no {REGISTERED_RECORD} records {checkpoint} (the register stage writes it)"
    digest = None
    for path in _candidate_records(checkpoint):
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: as if absent (the register stage rewrites it atomically)
        inference = record.get("inference") if isinstance(record, dict) else None
        if not isinstance(inference, dict) or "checkpoint_md5" not in inference:
            why = f"{path} records no inference settings (registered before they were recorded: rerun dvc repro " \
                  "register)"
            continue
        digest = digest or file_md5(checkpoint)
        if inference["checkpoint_md5"] != digest:
            why = (f"{checkpoint} is not the checkpoint {path} records ({record.get('name')} version "
                   f"{record.get('version')}): it changed since (a dvc exp run?); "
                   f"--model models:/{record.get('name')}@{record.get('alias')} serves the registered one")
            continue
        settings, sliding = settings_from_record(inference, str(path))
        source = f"{path} ({record.get('name')} version {record.get('version')}, as the pipeline evaluated it)"
        return RecordedSettings(settings, sliding, source), ""
    return None, why


def describe_settings(settings: InferenceSettings, sliding: bool) -> str:
    """One line of what matters about ``settings``: ``template simple, bg_thresh 0.55, PAMR, kp_w 0.3,
    short side 96 (long <= 439), sliding 96-px windows every 48 px``."""
    background = "no background" if settings.bg_thresh is None else f"bg_thresh {settings.bg_thresh:g}"
    windows = f"sliding {settings.crop}-px windows every {settings.stride} px" if sliding else "whole image"
    return (f"template {settings.template}, {background}, {'PAMR' if settings.pamr else 'no PAMR'}, "
            f"kp_w {settings.kp_w:g}, short side {settings.short_side} (long <= {settings.long_side}), {windows}")


def default_settings() -> RecordedSettings:
    """The shared defaults as a record (whole image), for a model nothing was recorded for. Read at
    call time, so the one definition in :mod:`tcl.inference.settings` is what applies."""
    from . import settings

    return RecordedSettings(settings.DEFAULT_SETTINGS, False, "the defaults, the paper's official setting")
