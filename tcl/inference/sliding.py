"""Sliding-window inference of the evaluation protocol, batched
(official ``test_cfg`` in kakaobrain/tcl bc2b551, segmentation/configs/_base_/datasets/*.py).

Windows are placed exactly as mmseg's ``slide_inference``: along an axis of length L there are n =
max(L − crop + stride − 1, 0) // stride + 1 windows at multiples of ``stride``, the last one shifted
back to end at the border, each ``min(crop, L)`` long. Every window goes through
:meth:`tcl.TCL.generate_masks` (PAMR and KP as configured, as official ``TCL.generate_masks``) and
overlapping outputs are averaged. Unlike the original (one window per forward pass), windows of the
same size, from one or several images, are stacked into batches of ``window_batch``;
``generate_masks`` treats every batch item independently, so the scores are those of one-by-one
inference up to float rounding.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..runtime import autocast
from .scores import with_background

__all__ = ["window_starts", "window_boxes", "sliding_window_scores", "sliding_window_scores_many"]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis (mmseg's placement, last window at the border)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, length) - crop, 0) for i in range(count)]


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, x1, y2, x2) of every window of an image, row by row."""
    return [(y, x, min(y + crop, height), min(x + crop, width))
            for y in window_starts(height, crop, stride) for x in window_starts(width, crop, stride)]


@torch.no_grad()
def sliding_window_scores_many(model, images: list[torch.Tensor], text_emb: torch.Tensor, *, crop: int, stride: int,
                               apply_pamr: bool, kp_w: float, bg_thresh: float | None, window_batch: int = 16,
                               precision: str = "fp32") -> list[torch.Tensor]:
    """Averaged window scores [K(+1), H, W] for each normalised image [1, 3, H, W] (already resized to
    the protocol size). Windows of equal size are batched across all ``images``; ``bg_thresh=None``
    means no background channel, otherwise a constant ``bg_thresh`` channel is put in front.
    ``precision`` bf16/fp16 runs the model under autocast; scores are accumulated in fp32."""
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    if not 0 < stride <= crop:
        raise ValueError(f"the sliding-window stride must be in [1, crop={crop}] so that windows cover the image, "
                         f"got {stride}")
    num_classes = text_emb.shape[0]
    sums, counts, groups = [], [], defaultdict(list)
    for index, image in enumerate(images):
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image [1, 3, H, W], got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        sums.append(image.new_zeros((num_classes, height, width), dtype=torch.float32))
        counts.append(image.new_zeros((1, height, width), dtype=torch.float32))
        for box in window_boxes(height, width, crop, stride):
            groups[(box[2] - box[0], box[3] - box[1])].append((index, box))
    for windows in groups.values():
        for start in range(0, len(windows), window_batch):
            chunk = windows[start:start + window_batch]
            crops = torch.cat([images[i][:, :, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
            with autocast(precision, crops.device):
                masks = model.generate_masks(crops, text_emb, apply_pamr=apply_pamr, kp_w=kp_w)
            for (i, (y1, x1, y2, x2)), mask in zip(chunk, masks.float(), strict=True):
                sums[i][:, y1:y2, x1:x2] += mask
                counts[i][:, y1:y2, x1:x2] += 1
    return [with_background(total / count, bg_thresh) for total, count in zip(sums, counts, strict=True)]


def sliding_window_scores(model, image: torch.Tensor, text_emb: torch.Tensor, *, crop: int, stride: int,
                          apply_pamr: bool, kp_w: float, bg_thresh: float | None, window_batch: int = 16,
                          precision: str = "fp32") -> torch.Tensor:
    """Averaged window scores [K(+1), H, W] of one normalised image [1, 3, H, W] at the protocol size."""
    return sliding_window_scores_many(model, [image], text_emb, crop=crop, stride=stride, apply_pamr=apply_pamr,
                                      kp_w=kp_w, bg_thresh=bg_thresh, window_batch=window_batch,
                                      precision=precision)[0]
