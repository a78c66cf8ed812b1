"""Segment images with free-form phrases: one loaded model, options, and cached text embeddings.

:class:`Predictor` is what ``tcl predict``, the MLflow model and the web demo share: it encodes each
phrase list once (:meth:`tcl.TCL.build_text_embedding`, the expensive text tower) and reuses it for
every image, then runs :func:`tcl.inference.segment.segment_image` (whole image, or the benchmark's sliding
windows). Defaults: :data:`tcl.inference.settings.DEFAULT_SETTINGS`, the paper's ``official`` setting.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import write_json_atomic
from ..errors import require
from ..model import TCL
from ..visualize import overlay_with_legend, palette, save_atomic
from .inputs import DEFAULT_MAX_PIXELS, InputError, parse_phrases
from .segment import Segmentation, segment_image
from .settings import DEFAULT_SETTINGS, InferenceSettings

__all__ = ["PRECISIONS", "PredictOptions", "Predictor", "load_inference_model", "overlay_image", "label_image",
           "write_outputs"]


@dataclass(frozen=True, init=False)
class PredictOptions:
    """What a service runs with: the :class:`InferenceSettings` plus how it runs them. ``sliding``
    switches from one whole-image pass to the benchmark's windows (``settings.crop`` / ``stride``),
    ``window_batch`` windows per forward pass; images over ``max_pixels`` are refused; ``precision``
    one of :data:`PRECISIONS`.

    The settings' fields may also be given flat, ``PredictOptions(short_side=64, bg_thresh=None)``
    (applied to ``settings``, by default :data:`DEFAULT_SETTINGS`), and so may :meth:`replace`'s:
    that is how the command line, the MLflow model's config and requests, and the web demo name them.
    """

    settings: InferenceSettings
    sliding: bool
    window_batch: int
    max_pixels: int
    precision: str

    def __init__(self, settings: InferenceSettings = DEFAULT_SETTINGS, sliding: bool = False, window_batch: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "fp32", **setting_changes) -> None:
        require(isinstance(settings, InferenceSettings), "settings", "must be an InferenceSettings", settings)
        unknown = set(setting_changes) - _SETTING_NAMES
        if unknown:  # a misspelt option is the caller's bug, as for any keyword argument
            raise TypeError(f"PredictOptions() got unexpected keyword argument(s) {sorted(unknown)}")
        if setting_changes:
            settings = dataclasses.replace(settings, **setting_changes)
        for name, value in (("settings", settings), ("sliding", sliding), ("window_batch", window_batch),
                            ("max_pixels", max_pixels), ("precision", precision)):
            object.__setattr__(self, name, value)  # frozen: the dataclass way to set fields in __init__
        require(isinstance(self.sliding, bool), "sliding", "must be true or false", self.sliding)
        require(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)
        require(self.window_batch >= 1, "window_batch", "must be >= 1", self.window_batch)
        require(self.max_pixels >= 1, "max_pixels", "must be >= 1", self.max_pixels)

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every name the constructor and :meth:`replace` accept, flat."""
        return _SETTING_NAMES | _OWN_NAMES

    def replace(self, **changes) -> PredictOptions:
        """A copy with ``changes`` (flat names, or ``settings``) applied; validated like a new object."""
        current = {"settings": self.settings, "sliding": self.sliding, "window_batch": self.window_batch,
                   "max_pixels": self.max_pixels, "precision": self.precision}
        return PredictOptions(**{**current, **changes})


#: ``precision``'s choices: fp32 is exact (the default); bf16 runs the networks under bf16 autocast (the
#: similarities, PAMR and KP stay fp32); auto is bf16 where the device computes it natively, else fp32
#: (:func:`tcl.runtime.resolve_precision`). What bf16 changes: docs/evaluation.md, *Precision*.
PRECISIONS = ("fp32", "bf16", "auto")

_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(InferenceSettings))
_OWN_NAMES = frozenset(f.name for f in dataclasses.fields(PredictOptions)) - {"settings"}


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
        with self._lock:
            text_emb = self.text_embedding(phrases, options.settings.template)
            return segment_image(self.model, image, phrases, text_emb, options.settings, sliding=options.sliding,
                                 window_batch=options.window_batch, precision=options.precision)


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
