"""Qualitative panels: image | ground truth | prediction, each labelled map with its class legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..visualize import overlay_with_legend, palette

__all__ = ["comparison_panel"]

_IGNORED = (128, 128, 128)


def _titled(image: Image.Image, title: str) -> Image.Image:
    out = Image.new("RGB", (image.width, image.height + 16), (255, 255, 255))
    ImageDraw.Draw(out).text((4, 2), title, fill=(0, 0, 0))
    out.paste(image, (0, 16))
    return out


def comparison_panel(image: Image.Image, gt: np.ndarray, pred: np.ndarray, classes: list[str],
                     with_background: bool) -> Image.Image:
    """Side-by-side panel of the original image, the ground truth (255 shown grey as "ignored") and
    the prediction; ``classes`` are the label names (mmseg's classes, background first if any)."""
    colours = np.concatenate([palette(len(classes), background=with_background), np.array([_IGNORED], np.uint8)])
    names = [*classes, "ignored"]
    gt = np.where(gt == 255, len(classes), gt).astype(np.int64)
    panels = [_titled(image.convert("RGB"), "image"),
              _titled(overlay_with_legend(image, gt, names, colours), "ground truth"),
              _titled(overlay_with_legend(image, pred.astype(np.int64), names, colours), "prediction")]
    gap = 6
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * 2, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    return out
