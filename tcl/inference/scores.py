"""Class scores → label map: the background channel and the arg-max at a given size.

Shared by whole-image inference (:mod:`tcl.inference.segment`), the sliding windows
(:mod:`tcl.inference.sliding`) and the benchmarks (:mod:`tcl.eval.evaluate`); it imports none of
them, so they all import it one way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["with_background", "labels_at"]


def with_background(scores: torch.Tensor, bg_thresh: float | None) -> torch.Tensor:
    """Prepend a constant ``bg_thresh`` channel to class scores [..., K, H, W] (official
    ``TCLSegInference.encode_decode``): after the arg-max, background wins wherever every class
    score is below the threshold (and on ties)."""
    if bg_thresh is None:
        return scores
    return torch.cat([torch.full_like(scores.narrow(-3, 0, 1), bg_thresh), scores], dim=-3)


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
            labels.masked_fill_(better, index)  # (not labels[better] = ...: a boolean index syncs a GPU)
    return labels
