"""Class scores → label map: the background channel and the arg-max at a given size.

Shared by whole-image inference (:mod:`tcl.inference.segment`), the sliding windows
(:mod:`tcl.inference.sliding`) and the benchmarks (:mod:`tcl.eval.evaluate`); it imports none of
them, so they all import it one way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["with_background", "labels_at", "labels_at_thresholds"]


def with_background(scores: torch.Tensor, bg_thresh: float | None) -> torch.Tensor:
    """Prepend a constant ``bg_thresh`` channel to class scores [..., K, H, W] (official
    ``TCLSegInference.encode_decode``): after the arg-max, background wins wherever every class
    score is below the threshold (and on ties)."""
    if bg_thresh is None:
        return scores
    return torch.cat([torch.full_like(scores.narrow(-3, 0, 1), bg_thresh), scores], dim=-3)


def _resized(scores: torch.Tensor, index: int, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(scores[None, index:index + 1], size=size, mode="bilinear", align_corners=False)[0, 0]


def _scan(scores: torch.Tensor, size: tuple[int, int], best: torch.Tensor | None = None,
          labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Running arg-max over the resized channels, from ``best``/``labels`` when given (strict ``>``:
    ties keep the lower index, as torch.argmax does); returns the best value and its channel index."""
    for index in range(scores.shape[0]):
        channel = _resized(scores, index, size)
        if best is None:
            best, labels = channel, torch.zeros(size, dtype=torch.int64, device=scores.device)
        else:
            better = channel > best
            best = torch.where(better, channel, best)
            labels.masked_fill_(better, index)  # (not labels[better] = ...: a boolean index syncs a GPU)
    return best, labels


def labels_at(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Arg-max over classes of the bilinearly resized scores [C, h, w] (align_corners=False, as mmseg's
    ``postprocess_result``), one channel at a time, so a large photo never holds C full-size score
    maps (same result as resizing them all at once)."""
    return _scan(scores, size)[1]


def labels_at_thresholds(scores: torch.Tensor, size: tuple[int, int],
                         thresholds: Sequence[float | None]) -> list[torch.Tensor]:
    """``labels_at(with_background(scores, t), size)`` for each ``t`` of ``thresholds``, bit for bit,
    with the class channels resized once instead of once per threshold.

    The arg-max of [background, classes] (ties to the lower index) is the first class reaching the
    classes' maximum where that maximum is above the resized background channel, and the background
    elsewhere. The class scan starts from -inf, so that a NaN channel is never chosen, as in the
    scan that starts from the background channel. Choosing a threshold (a sweep over ten) on a
    training split spent most of its time resizing the same class scores ten times.
    """
    if all(t is None for t in thresholds):
        return [labels_at(scores, size) for _ in thresholds]
    floor = torch.full(size, -math.inf, dtype=scores.dtype, device=scores.device)
    best, labels = _scan(scores, size, floor, torch.zeros(size, dtype=torch.int64, device=scores.device))
    labels += 1  # the background takes channel 0
    out = []
    for thresh in thresholds:
        if thresh is None:
            out.append(labels_at(scores, size))
            continue
        background = _resized(torch.full_like(scores.narrow(-3, 0, 1), thresh), 0, size)
        out.append(torch.where(best > background, labels, torch.zeros_like(labels)))
    return out
