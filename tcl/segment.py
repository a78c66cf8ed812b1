"""Segment one image with free-form class names (whole-image inference).

The evaluation protocol with sliding windows lives in the evaluation module; this is the quick path
for looking at what a model sees: resize so the short side is ``short_side``, run
:meth:`tcl.TCL.generate_masks` on the whole image, add a constant background channel when a
threshold is given, and take the arg-max at the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .model import TCL

__all__ = ["Segmentation", "segment_image"]


@dataclass
class Segmentation:
    labels: np.ndarray  # [H, W] int, index into names
    names: list[str]  # "background" first when a background threshold was used
    scores: np.ndarray  # [K(+1), H, W] float32

    def fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names)) / self.labels.size
        return {name: round(float(c), 6) for name, c in zip(self.names, counts, strict=True)}


@torch.no_grad()
def segment_image(model: TCL, image: Image.Image, class_names: list[str], text_emb: torch.Tensor, *,
                  short_side: int = 448, apply_pamr: bool = True, kp_w: float = 0.3,
                  bg_thresh: float | None = 0.4) -> Segmentation:
    """Segment ``image`` into ``class_names`` whose embeddings ``text_emb`` [K, D] come from
    :meth:`TCL.build_text_embedding` (computed once for all images)."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    rgb = rgb.permute(2, 0, 1).unsqueeze(0).to(model.pixel_mean.device)
    height, width = rgb.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    masks = model.generate_masks(model.normalize(resized), text_emb, apply_pamr=apply_pamr, kp_w=kp_w)
    names = list(class_names)
    if bg_thresh is not None:
        masks = torch.cat([torch.full_like(masks[:, :1], bg_thresh), masks], dim=1)
        names = ["background", *names]
    masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)[0]
    return Segmentation(labels=masks.argmax(0).cpu().numpy(), names=names, scores=masks.cpu().numpy())
