"""Colour overlays with a class legend, and atomic PNG writing."""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_path

__all__ = ["palette", "overlay_with_legend", "save_atomic"]


def palette(num_classes: int, background: bool) -> np.ndarray:
    """Distinct RGB colours [num_classes, 3]; black for a leading background class."""
    colours = []
    for i in range(num_classes):
        if background and i == 0:
            colours.append((0, 0, 0))
            continue
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colours, dtype=np.uint8)


def overlay_with_legend(image: Image.Image, labels: np.ndarray, names: list[str], colours: np.ndarray,
                        alpha: float = 0.55) -> Image.Image:
    """Blend the label map over the image and append a legend of the classes present."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * colours[labels].astype(np.float32)
    canvas = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    present = [i for i in np.unique(labels).tolist()]
    row = 18
    legend = Image.new("RGB", (canvas.width, row * len(present) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for n, index in enumerate(present):
        y = 3 + n * row
        draw.rectangle([4, y, 18, y + 14], fill=tuple(int(c) for c in colours[index]))
        draw.text((24, y + 1), names[index], fill=(0, 0, 0))
    out = Image.new("RGB", (canvas.width, canvas.height + legend.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(legend, (0, canvas.height))
    return out


def save_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG through a temporary file and a rename, so no half-written file is left."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
