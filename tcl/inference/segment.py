"""Segment one image with free-form class names.

Resize as the evaluation protocol does (official segmentation/configs/_base_/datasets/*.py: the
short side becomes ``short_side`` unless the long side would exceed ``max_long_side``), score the
classes either on the whole image at once (:meth:`tcl.TCL.generate_masks`, the quick path) or with
overlapping sliding windows (``tcl.inference.sliding``, the benchmark protocol), put a constant
background channel in front when a threshold is given, and take the arg-max at the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model import TCL

__all__ = ["Segmentation", "SlidingWindow", "segment_image", "protocol_size", "with_background", "labels_at"]


@dataclass
class Segmentation:
    labels: np.ndarray  # [H, W] int64 at the original size, index into names
    names: list[str]  # "background" first when a background threshold was used
    scores: np.ndarray  # [K(+1), h, w] float32 at the processing size (before the final resize)

    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names)) / self.labels.size
        return {name: round(float(c), 6) for name, c in zip(self.names, counts, strict=True)}


@dataclass(frozen=True)
class SlidingWindow:
    """Sliding-window settings (official ``test_cfg``: 448 px crops, stride 224, averaged overlaps)."""

    crop: int = 448
    stride: int = 224
    window_batch: int = 1


def protocol_size(height: int, width: int, short_side: int, max_long_side: int = 2048) -> tuple[int, int]:
    """mmseg's keep-ratio resize (the official test pipeline's ``Resize``): factor min(long cap / long, short / short),
    new size ⌊dim·f + 0.5⌋."""
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def labels_at(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Arg-max over classes of the bilinearly resized scores [C, h, w] (align_corners=False, as mmseg's
    ``postprocess_result``), one channel at a time, so a large photo never holds C full-size score
    maps (same result as resizing them all at once)."""
    best = labels = None
    for index in range(scores.shape[0]):
        channel = F.interpolate(scores[None, index:index + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        if best is None:
            best, labels = channel, torch.zeros(size, dtype=torch.int64, device=scores.device)
        else:
            better = channel > best  # strict: ties keep the lower index, as torch.argmax does
            best = torch.where(better, channel, best)
            labels[better] = index
    return labels


def with_background(scores: torch.Tensor, bg_thresh: float | None) -> torch.Tensor:
    """Prepend a constant ``bg_thresh`` channel to class scores [..., K, H, W] (official
    ``TCLSegInference.encode_decode``): after the arg-max, background wins wherever every class
    score is below the threshold (and on ties)."""
    if bg_thresh is None:
        return scores
    return torch.cat([torch.full_like(scores.narrow(-3, 0, 1), bg_thresh), scores], dim=-3)


@torch.no_grad()
def segment_image(model: TCL, image: Image.Image, class_names: list[str], text_emb: torch.Tensor, *,
                  short_side: int = 448, max_long_side: int = 2048, apply_pamr: bool = True, kp_w: float = 0.3,
                  bg_thresh: float | None = 0.4, sliding: SlidingWindow | None = None) -> Segmentation:
    """Segment ``image`` into ``class_names`` whose embeddings ``text_emb`` [K, D] come from
    :meth:`TCL.build_text_embedding` (computed once for all images). ``sliding=None`` scores the
    whole resized image in one pass; a :class:`SlidingWindow` runs the benchmark protocol."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    rgb = rgb.permute(2, 0, 1).unsqueeze(0).to(model.pixel_mean.device)
    height, width = rgb.shape[-2:]
    resized = F.interpolate(rgb, size=protocol_size(height, width, short_side, max_long_side), mode="bilinear",
                            align_corners=False)
    names = list(class_names)
    if sliding is not None:
        from .sliding import sliding_window_scores  # the evaluation protocol's own implementation

        scores = sliding_window_scores(model, model.normalize(resized), text_emb, crop=sliding.crop,
                                       stride=sliding.stride, apply_pamr=apply_pamr, kp_w=kp_w,
                                       bg_thresh=bg_thresh, window_batch=sliding.window_batch)
    else:
        scores = model.generate_masks(model.normalize(resized), text_emb, apply_pamr=apply_pamr, kp_w=kp_w)[0]
        scores = with_background(scores, bg_thresh)
    if bg_thresh is not None:
        names = ["background", *names]
    return Segmentation(labels=labels_at(scores, (height, width)).cpu().numpy(), names=names,
                        scores=scores.cpu().numpy())
