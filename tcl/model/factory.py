"""Factories: build open_clip CLIP towers and TCL models from names, config dicts or weight files.

Weight files are read without executing code from them: ``torch.save`` files through
:func:`tcl.serialization.safe_load` (torch's weights-only unpickler), OpenAI's TorchScript archives
through ``torch.jit.load`` (a TorchScript program, interpreted by the TorchScript runtime, never
Python's ``pickle``).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from ..serialization import LoadError, safe_load
from .config import CLIP_CONFIG_REQUIRED, TCLConfig, check_clip_config  # re-exported (torch-free home)
from .tcl import TCL

__all__ = [
    "WeightsError",
    "read_weights",
    "create_clip",
    "clip_from_openai_state_dict",
    "create_tcl",
    "check_clip_config",
    "CLIP_CONFIG_REQUIRED",
    "OPENAI_VIT_B16",
]

# open_clip's name for OpenAI's ViT-B/16 with QuickGELU, the paper's CLIP
# (kakaobrain/tcl bc2b551 loads OpenAI's ViT-B/16 through sclip/clip.py; sclip/model.py has QuickGELU).
OPENAI_VIT_B16 = "ViT-B-16-quickgelu"
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


class WeightsError(LoadError):
    """A weight file is missing, unreadable, or does not fit the model."""


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint or state dict onto the CPU without running code from it.

    ``torch.save`` files go through :func:`tcl.serialization.safe_load` (weights-only, any layout);
    OpenAI's TorchScript archives through ``torch.jit.load``, whose program is TorchScript run by
    TorchScript's interpreter, which has no access to Python's modules.
    """
    path = Path(path)
    if path.is_file() and _is_torchscript(path):
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as err:
            raise WeightsError(f"{path}: unreadable TorchScript archive ({str(err).strip().splitlines()[0]})") from None
    loaded = safe_load(path, what="weights file", error=WeightsError)
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
    return loaded


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def clip_from_openai_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """open_clip CLIP (QuickGELU, fp32, eval) from an OpenAI-format state dict.

    As OpenAI's loader (and the official TCL code) do, matrices pass through fp16 before the model
    is cast to fp32, so an fp32 state dict gives the same weights as the official code.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_META_KEYS}
    if "visual.proj" not in state_dict or "visual.class_embedding" not in state_dict:
        raise WeightsError("not an OpenAI ViT CLIP state dict (no visual.proj / visual.class_embedding)")
    try:
        model = open_clip.model.build_model_from_openai_state_dict(state_dict, quick_gelu=True,
                                                                   cast_dtype=None)
    except (RuntimeError, KeyError) as err:
        raise WeightsError(f"CLIP weights do not fit an OpenAI ViT CLIP: {err}") from None
    return model.float().eval()


def create_clip(model: str | dict = OPENAI_VIT_B16, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build a CLIP for TCL.

    * ``model`` an open_clip config name (``"ViT-B-16-quickgelu"``) or a config dict with
      ``embed_dim``, ``vision_cfg``, ``text_cfg`` and optional ``quick_gelu`` (tiny CLIPs, offline);
    * ``weights`` ``None`` (random init), ``"openai"`` (downloaded by open_clip, needs internet),
      an OpenAI-format state dict or TorchScript archive, or an open_clip state dict of ``model``.
    """
    if weights == "openai":
        name = model if isinstance(model, str) else OPENAI_VIT_B16
        return open_clip.create_model(name, pretrained="openai", device="cpu").float().eval()
    if weights is not None and isinstance(model, str) and model == OPENAI_VIT_B16:
        return clip_from_openai_state_dict(read_weights(weights))
    if isinstance(model, dict):
        cfg = dict(model)
        clip = open_clip.CLIP(embed_dim=cfg.pop("embed_dim"), vision_cfg=cfg.pop("vision_cfg"),
                              text_cfg=cfg.pop("text_cfg"), quick_gelu=cfg.pop("quick_gelu", True), **cfg)
    else:
        clip = open_clip.create_model(model, device="cpu")
    if weights is not None:
        state = read_weights(weights)
        state = state.get("state_dict", state)
        result = clip.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(f"{weights} does not fit the CLIP config: missing {result.missing_keys[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
    return clip.float().eval()


def create_tcl(clip: nn.Module | str | dict = OPENAI_VIT_B16, clip_weights=None,
               config: TCLConfig | None = None) -> TCL:
    """Build a TCL model on a CLIP module, or on ``create_clip(clip, clip_weights)``."""
    if not isinstance(clip, nn.Module):
        clip = create_clip(clip, clip_weights)
    return TCL(clip, config or TCLConfig())
