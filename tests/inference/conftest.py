"""Checkpoint files of a tiny TCL in both layouts this project loads, and small generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.conftest import TINY_CLIP


def write_tiny_checkpoint(folder: Path, ie_freeze: int = 2) -> Path:
    """A step-0 training checkpoint of a tiny TCL (CLIP weights in ``folder/clip``), via the real save path."""
    from tcl import TCLConfig, create_tcl
    from tcl.checkpoint import save_checkpoint, save_clip

    torch.manual_seed(0)
    model = create_tcl(dict(TINY_CLIP), config=TCLConfig(ie_freeze=ie_freeze))
    save_clip(folder / "clip", model.clip, TINY_CLIP)
    return save_checkpoint(folder / "tcl.pt", model=model, step=0, params={"model": {"ie_freeze": ie_freeze}},
                           clip={"model": TINY_CLIP, "weights": str(folder / "clip" / "clip.pt")})


def scene(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """A noisy background with a red disc and a blue square."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 60 + 100).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.1, height * 0.15, width * 0.45, height * 0.6], fill=(220, 40, 40))
    draw.rectangle([width * 0.55, height * 0.3, width * 0.9, height * 0.85], fill=(40, 90, 220))
    return image


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tcl"))
