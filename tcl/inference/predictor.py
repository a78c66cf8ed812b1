"""Segment images with free-form phrases: one loaded model, options, and cached text embeddings.

:class:`Predictor` is what ``tcl predict``, the MLflow model and the web demo share: it encodes each
phrase list once (:meth:`tcl.TCL.build_text_embedding`, the expensive text tower) and reuses it for
every image, then runs :func:`tcl.inference.segment.segment_image` (whole image, or the benchmark's sliding
windows). Defaults are the paper's evaluation settings (kakaobrain/tcl bc2b551 configs/eval.yml: PAMR on, background
threshold 0.4, KP weight 0.3, template ``custom``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import write_json_atomic
from ..model import TCL
from ..model.templates import get_templates
from ..visualize import overlay_with_legend, palette, save_atomic
from .inputs import DEFAULT_MAX_PIXELS, InputError, parse_phrases
from .segment import Segmentation, SlidingWindow, segment_image

__all__ = ["PredictOptions", "Predictor", "load_inference_model", "overlay_image", "label_image",
           "write_outputs"]


@dataclass(frozen=True)
class PredictOptions:
    """Inference settings. ``bg_thresh=None`` predicts only the given phrases (no background);
    ``sliding`` switches from one whole-image pass to 448-px windows (the benchmark protocol)."""

    short_side: int = 448
    max_long_side: int = 2048
    pamr: bool = True
    kp_w: float = 0.3
    bg_thresh: float | None = 0.4
    template: str = "custom"
    sliding: bool = False
    crop: int = 448
    stride: int = 224
    window_batch: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        checks = [
            (self.short_side >= 16, f"short_side must be >= 16, got {self.short_side}"),
            (self.max_long_side >= self.short_side, f"max_long_side must be >= short_side, got {self.max_long_side}"),
            (0.0 <= self.kp_w <= 1.0, f"kp_w must be in [0, 1], got {self.kp_w}"),
            (self.bg_thresh is None or 0.0 <= self.bg_thresh <= 1.0,
             f"bg_thresh must be in [0, 1] (masks are in [0, 1]), got {self.bg_thresh}"),
            (self.crop >= 16 and 1 <= self.stride <= self.crop,
             f"sliding windows need crop >= 16 and 1 <= stride <= crop, got crop {self.crop}, stride {self.stride}"),
            (self.window_batch >= 1, f"window_batch must be >= 1, got {self.window_batch}"),
            (self.max_pixels >= 1, f"max_pixels must be >= 1, got {self.max_pixels}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        try:
            get_templates(self.template)
        except ValueError as err:
            raise InputError(str(err)) from None


def load_inference_model(checkpoint: str | os.PathLike, clip_weights: str | os.PathLike | None = None,
                         device: str | torch.device = "cpu") -> TCL:
    """A model from our training checkpoint or the official ``tcl.pth`` (+ CLIP weights), in eval mode."""
    from ..checkpoint import CheckpointError, load_model

    try:
        return load_model(checkpoint, clip_weights=clip_weights, map_location=device)
    except (KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError) as err:
        # torch's weights-only unpickler raises these on some non-checkpoint files (a text file,
        # say); report them like every other unreadable checkpoint.
        raise CheckpointError(f"{checkpoint}: not a readable checkpoint ({type(err).__name__}: {err})") from None


class Predictor:
    """A model with inference options; text embeddings are cached per (phrase list, template).

    Thread-safe: the web demo and the MLflow server may call :meth:`segment` from several threads,
    so model calls are serialised (they would only compete for the same cores and memory).
    """

    def __init__(self, model: TCL, options: PredictOptions = PredictOptions(), cache_size: int = 32) -> None:
        self.model = model.eval()
        self.options = options
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def text_embedding(self, phrases: list[str], template: str) -> torch.Tensor:
        key = (tuple(phrases), template)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        emb = self._cache[key] = self.model.build_text_embedding(phrases, template=template)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return emb

    def segment(self, image: Image.Image, phrases, options: PredictOptions | None = None) -> Segmentation:
        """Segment one RGB image into ``phrases`` (a list, or a comma-separated string)."""
        options = options or self.options
        phrases = parse_phrases(phrases)
        width, height = image.size
        if width * height > options.max_pixels:
            raise InputError(f"image too large ({width}x{height} = {width * height} pixels; "
                             f"the limit is {options.max_pixels})")
        sliding = SlidingWindow(options.crop, options.stride, options.window_batch) if options.sliding else None
        with self._lock:
            text_emb = self.text_embedding(phrases, options.template)
            return segment_image(self.model, image, phrases, text_emb, short_side=options.short_side,
                                 max_long_side=options.max_long_side, apply_pamr=options.pamr, kp_w=options.kp_w,
                                 bg_thresh=options.bg_thresh, sliding=sliding)


def overlay_image(image: Image.Image, result: Segmentation) -> Image.Image:
    """The colour overlay with a legend of the classes present (background drawn black)."""
    colours = palette(len(result.names), background=result.names[0] == "background")
    return overlay_with_legend(image, result.labels, result.names, colours)


def label_image(result: Segmentation) -> Image.Image:
    """The label map as a greyscale PNG image: pixel value = index into ``result.names``."""
    dtype = np.uint8 if len(result.names) < 256 else np.uint16
    return Image.fromarray(result.labels.astype(dtype))


def write_outputs(image: Image.Image, result: Segmentation, stem: str, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``<stem>_overlay.png``, ``<stem>_labels.png`` and ``<stem>_fractions.json`` atomically."""
    out = Path(out)
    paths = {"overlay": out / f"{stem}_overlay.png", "labels": out / f"{stem}_labels.png",
             "fractions": out / f"{stem}_fractions.json"}
    save_atomic(overlay_image(image, result), paths["overlay"])
    save_atomic(label_image(result), paths["labels"])
    write_json_atomic(paths["fractions"], {"classes": result.names, "fractions": result.fractions()})
    return paths
