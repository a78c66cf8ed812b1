"""Segment one image with free-form class names.

Resize as the evaluation protocol does (official segmentation/configs/_base_/datasets/*.py: the
short side becomes ``short_side`` unless the long side would exceed ``long_side``), score the
classes either on the whole image at once (:meth:`tcl.TCL.generate_masks`, the quick path) or with
overlapping sliding windows (:mod:`tcl.inference.sliding`, the benchmark protocol), put a constant
background channel in front when a threshold is given, and take the arg-max at the original size
(:mod:`tcl.inference.scores`). Every setting comes from one :class:`InferenceSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model import TCL
from ..runtime import autocast, resolve_precision
from .scores import labels_at, with_background
from .settings import DEFAULT_SETTINGS, InferenceSettings
from .sliding import sliding_window_scores

__all__ = ["Segmentation", "segment_image", "protocol_size"]


@dataclass
class Segmentation:
    labels: np.ndarray  # [H, W] int64 at the original size, index into names
    names: list[str]  # "background" first when a background threshold was used
    scores: np.ndarray  # [K(+1), h, w] float32 at the processing size (before the final resize)

    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names)) / self.labels.size
        return {name: round(float(c), 6) for name, c in zip(self.names, counts, strict=True)}


def protocol_size(height: int, width: int, short_side: int, long_side: int) -> tuple[int, int]:
    """mmseg's keep-ratio resize (the official test pipeline's ``Resize``): factor min(long cap / long, short / short),
    new size ⌊dim·f + 0.5⌋."""
    scale = min(short_side / min(height, width), long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@torch.no_grad()
def segment_image(model: TCL, image: Image.Image, class_names: list[str], text_emb: torch.Tensor,
                  settings: InferenceSettings = DEFAULT_SETTINGS, *, sliding: bool = False,
                  window_batch: int = 1, precision: str = "fp32") -> Segmentation:
    """Segment ``image`` into ``class_names`` whose embeddings ``text_emb`` [K, D] come from
    :meth:`TCL.build_text_embedding` (computed once for all images). ``sliding=False`` scores the
    whole resized image in one pass; ``sliding=True`` runs the benchmark protocol's windows
    (``settings.crop`` / ``settings.stride``), ``window_batch`` of them per forward pass. ``precision``
    ``bf16`` / ``fp16`` runs the networks under autocast, ``auto`` picks bf16 where the device has it
    natively (:func:`tcl.runtime.resolve_precision`), ``fp32`` is exact."""
    precision = resolve_precision(precision, model.pixel_mean.device, inference=True)
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    rgb = rgb.permute(2, 0, 1).unsqueeze(0).to(model.pixel_mean.device)
    height, width = rgb.shape[-2:]
    size = protocol_size(height, width, settings.short_side, settings.long_side)
    resized = model.normalize(F.interpolate(rgb, size=size, mode="bilinear", align_corners=False))
    names = list(class_names)
    if sliding:
        scores = sliding_window_scores(model, resized, text_emb, crop=settings.crop, stride=settings.stride,
                                       apply_pamr=settings.pamr, kp_w=settings.kp_w, bg_thresh=settings.bg_thresh,
                                       window_batch=window_batch, precision=precision)
    else:
        with autocast(precision, resized.device):
            scores = model.generate_masks(resized, text_emb, apply_pamr=settings.pamr, kp_w=settings.kp_w)[0]
        scores = with_background(scores, settings.bg_thresh)
    if settings.bg_thresh is not None:
        names = ["background", *names]
    return Segmentation(labels=labels_at(scores, (height, width)).cpu().numpy(), names=names,
                        scores=scores.cpu().numpy())
