"""Training progress: averaged meters, the periodic log line, CSV curves for DVC plots, mask previews.

Everything here runs on the main process only and touches no model state.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..atomic import write_text_atomic
from ..model import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Meters", "format_duration", "format_log_line", "CurveFile", "mask_preview"]


class Meters:
    """Running means of scalar values since the last :meth:`reset` (one log interval)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def update(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: self._sums[key] / self._counts[key] for key in self._sums}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_log_line(record: dict, total_steps: int) -> str:
    """``step 40/600 | loss 1.2345 (area_loss 0.0123 …) | mask 0.41/0.12 | lr … | gn … | … samples/s | eta``."""
    terms = " ".join(f"{key} {record[key]:.4f}" for key in sorted(record) if key.endswith("_loss"))
    parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']:.4f} ({terms})",
             f"mask {record.get('mask_area', float('nan')):.3f}/{record.get('neg_mask_area', float('nan')):.3f}",
             f"lr {record['lr']:.2e}", f"gn {record['grad_norm']:.3f}",
             f"{record['samples_per_s']:.1f} samples/s"]
    if record.get("data_skipped"):
        parts.append(f"data skipped {record['data_skipped']}")
    if record.get("nonfinite_steps"):
        parts.append(f"non-finite steps {record['nonfinite_steps']}")
    parts.append(f"eta {format_duration(record['eta_s'])}")
    return " | ".join(parts)


class CurveFile:
    """A CSV of one row per logged step (a DVC plot), rewritten atomically on every append.

    On resume, rows from steps after the resumed step are dropped: they belong to the run that was
    interrupted and will be logged again.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(float(row["step"])) <= resume_step]

    def append(self, row: dict) -> None:
        self.rows.append({key: _plain(value) for key, value in row.items()})
        fields = list(dict.fromkeys(key for item in self.rows for key in item))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, buffer.getvalue())


def _plain(value):
    return round(value, 6) if isinstance(value, float) else value


def mask_preview(images: torch.Tensor, masks: torch.Tensor, captions: list[str], count: int = 3) -> Image.Image:
    """A grid of ``count`` samples: image | soft positive mask > 0.5 | masked image, captioned.

    The official ``main.py`` ``do_training`` logs such a grid to W&B.

    ``images`` are ImageNet-normalised [B, 3, H, W]; ``masks`` the soft positive masks [B, 1, h, w].
    """
    count = min(count, len(images))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    height, width = images.shape[-2:]
    caption_height = 14
    sheet = Image.new("RGB", (3 * width, count * (height + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for row in range(count):
        rgb = (images[row].detach().float().cpu() * std + mean).clamp(0, 1)
        mask = torch.nn.functional.interpolate(masks[row:row + 1].detach().float().cpu(), size=(height, width),
                                               mode="nearest")[0] > 0.5
        tiles = [rgb, mask.float().expand(3, -1, -1), rgb * mask]
        top = row * (height + caption_height)
        for col, tile in enumerate(tiles):
            array = (tile.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            sheet.paste(Image.fromarray(array), (col * width, top + caption_height))
        draw.text((2, top + 1), captions[row][: 6 * width // 7], fill="black")
    return sheet
