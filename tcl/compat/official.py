"""Load the released TCL checkpoint (``tcl.pth``) of the official implementation.

The official model keeps CLIP in two wrappers and the masker in nested modules; this module maps its
state-dict keys (read off the official model into
``tests/fixtures/official_tcl_checkpoint_keys.tsv``) onto :class:`tcl.TCL` and back. The released
file is "minimal": it holds only the non-CLIP keys, and possibly not the two loss temperatures, so
the CLIP weights come from a separate OpenAI ViT-B/16 file.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import torch

from ..model.factory import (
    OPENAI_VIT_B16,
    WeightsError,
    clip_from_openai_state_dict,
    create_clip,
    read_weights,
)
from ..model.tcl import TCL, TCLConfig

__all__ = ["load_official_checkpoint", "official_model_from_state", "official_to_tcl_key", "tcl_to_official_key",
           "export_official_state_dict"]

_BACKBONE = "masker.image_encoder.backbone.transformer.resblocks."
_DECODER = re.compile(r"^masker\.image_encoder\.decoder\.decoder\.net\.(\d+)\.(conv|conv2)\.(.+)$")
_OUR_DECODER = re.compile(r"^masker\.decoder\.stages\.(\d+)\.(block1|block2)\.(.+)$")
_BLOCK_NAMES = {"conv": "block1", "conv2": "block2"}
# (official prefix, our prefix), most specific first; used in both directions.
_PREFIXES = (
    ("masker.image_encoder.decoder.image_proj.", "masker.head."),
    ("masker.sim2mask.", "masker.sim2mask."),
    ("tcli_loss.", "image_loss."),
    ("tclf_loss.", "region_loss."),
    ("clip_image_encoder.clip_proj.ln.", "clip.visual.ln_post."),
    ("clip_image_encoder.clip_proj.proj", "clip.visual.proj"),
    ("clip_image_encoder.clip_visual.", "clip.visual."),
    ("clip_text_encoder.", "clip."),
)
# Keys the official loader tolerates as missing: frozen CLIP and loss temperatures (kakaobrain/tcl bc2b551,
# utils/checkpoint.py, load_checkpoint).
_OPTIONAL = re.compile(r"^(clip_.+_encoder\..+|.+_loss\..+)$")


def official_to_tcl_key(key: str, ie_freeze: int) -> str | None:
    """Our parameter name for an official key, or None when the key has no counterpart."""
    if key.startswith(_BACKBONE):
        index, rest = key[len(_BACKBONE):].split(".", 1)
        return f"masker.blocks.{int(index) - ie_freeze}.{rest}"
    match = _DECODER.match(key)
    if match:
        stage, block, rest = match.groups()
        return f"masker.decoder.stages.{stage}.{_BLOCK_NAMES[block]}.{'gate' if rest == 'gate.gate' else rest}"
    for official, ours in _PREFIXES:
        if key.startswith(official):
            return ours + key[len(official):]
    return None


def tcl_to_official_key(key: str, ie_freeze: int) -> str | None:
    """The official name of one of our parameters (None for CLIP's own ``logit_scale``/``logit_bias``)."""
    if key.startswith("masker.blocks."):
        index, rest = key[len("masker.blocks."):].split(".", 1)
        return f"{_BACKBONE}{int(index) + ie_freeze}.{rest}"
    match = _OUR_DECODER.match(key)
    if match:
        stage, block, rest = match.groups()
        official_block = {v: k for k, v in _BLOCK_NAMES.items()}[block]
        rest = "gate.gate" if rest == "gate" else rest
        return f"masker.image_encoder.decoder.decoder.net.{stage}.{official_block}.{rest}"
    if key in ("clip.logit_scale", "clip.logit_bias"):
        return None
    for official, ours in _PREFIXES:
        if key.startswith(ours):
            return official + key[len(ours):]
    return None


def export_official_state_dict(model: TCL, include_clip: bool = False) -> dict[str, torch.Tensor]:
    """Our model's weights under the official key names (the released-checkpoint layout)."""
    out = {}
    for key, value in model.state_dict().items():
        name = tcl_to_official_key(key, model.config.ie_freeze)
        if name is not None and (include_clip or not name.startswith("clip_")):
            out[name] = value.detach().clone()
    return out


def _infer_structure(state: dict[str, torch.Tensor], source: str) -> TCLConfig:
    blocks = {int(k[len(_BACKBONE):].split(".", 1)[0]) for k in state if k.startswith(_BACKBONE)}
    stages = {int(m.group(1)) for m in map(_DECODER.match, state) if m}
    if not blocks or not stages:
        raise WeightsError(f"{source}: not a TCL checkpoint (ours or the official one): no masker backbone or "
                           f"decoder keys (first keys: {sorted(state)[:3]})")
    return TCLConfig(ie_freeze=min(blocks), decoder_stages=max(stages) + 1)


def _clip_from_checkpoint(state: dict[str, torch.Tensor]):
    """A CLIP built from the full CLIP keys that some official checkpoints carry."""
    openai = {}
    for key, value in state.items():
        ours = official_to_tcl_key(key, 0) if key.startswith("clip_") else None
        if ours is not None:
            openai[ours[len("clip."):]] = value
    # The official text wrapper drops CLIP's logit_scale; open_clip's builder wants one (TCL ignores it).
    openai.setdefault("logit_scale", torch.tensor(math.log(1 / 0.07)))
    clip = clip_from_openai_state_dict(dict(openai))
    clip.load_state_dict(openai, strict=False)  # exact fp32 values, as the official loader keeps them
    return clip


def load_official_checkpoint(checkpoint: str | os.PathLike, clip_weights: str | os.PathLike | None = None,
                             device: str | torch.device = "cpu") -> TCL:
    """Build :class:`tcl.TCL` from the official ``tcl.pth`` and OpenAI CLIP weights.

    ``checkpoint``: a file holding ``{"model": state_dict}`` (or the bare state dict) with the
    official non-CLIP keys. ``clip_weights``: an OpenAI-format ViT-B/16 state dict or TorchScript
    archive (``ViT-B-16.pt``), or ``"openai"`` to let open_clip download it; it may be omitted when
    the checkpoint carries the CLIP keys itself. Files are read weights-only. Returns the model in
    eval mode on ``device``. Missing, unexpected or mis-shaped keys raise :class:`WeightsError`
    naming them.
    """
    return official_model_from_state(read_weights(checkpoint), clip_weights, device, source=str(checkpoint))


def official_model_from_state(raw: Any, clip_weights: str | os.PathLike | None = None,
                              device: str | torch.device = "cpu", source: str = "checkpoint") -> TCL:
    """:func:`load_official_checkpoint` on the already loaded contents ``raw`` of the file ``source``."""
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a dict of tensors under 'model'")
    config = _infer_structure(state, source)
    has_clip = any(k.startswith("clip_image_encoder.clip_visual.") for k in state) and \
        any(k.startswith("clip_text_encoder.") for k in state)
    if clip_weights is not None:
        clip = create_clip(OPENAI_VIT_B16, clip_weights)
    elif has_clip:
        clip = _clip_from_checkpoint(state)
    else:
        raise WeightsError(f"{source} holds no CLIP weights: pass clip_weights= an OpenAI ViT-B/16 "
                           "file (ViT-B-16.pt) or 'openai'")
    model = TCL(clip, config)

    ours = model.state_dict()
    mapped, unexpected, mismatched = {}, [], []
    for key, value in state.items():
        name = official_to_tcl_key(key, config.ie_freeze)
        if name is None or name not in ours:
            unexpected.append(key)
        elif ours[name].shape != value.shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[name].shape)}")
        else:
            mapped[name] = value
    missing = [official for name in ours
               if (official := tcl_to_official_key(name, config.ie_freeze)) is not None
               and name not in mapped and not _OPTIONAL.match(official)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise WeightsError(f"{source} does not match the TCL model: " + "; ".join(problems))
    model.load_state_dict(mapped, strict=False)
    return model.eval().to(device)
