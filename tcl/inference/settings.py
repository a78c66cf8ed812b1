"""The inference settings: everything a predicted label map depends on besides the model and the image.

One frozen :class:`InferenceSettings` is what the evaluation (:meth:`tcl.eval.EvalConfig.settings`),
``tcl predict`` / ``tcl serve-demo`` (their argparse defaults), the MLflow pyfunc model (its
request-parameter defaults) and the web demo (its page's defaults) all start from; its field defaults
are the paper's ``official`` setting and are written here only.

Named presets, as the paper reports them (kakaobrain/tcl bc2b551 configs/eval.yml and README):
``official`` (PAMR on, background threshold 0.4, KP weight 0.3, ``custom`` templates; Table 2) and
``no_pamr`` (PAMR off, background threshold 0.5; the appendix table). The window geometry is the
official test pipeline's (segmentation/configs/_base_/datasets/*.py): resize so the short side is
448 unless the long side would exceed 2048, 448-px sliding windows every 224 px.

Torch-free at import, so the command lines can build their ``--help`` from it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from ..errors import require
from ..model.templates import TEMPLATES

__all__ = ["InferenceSettings", "PRESETS", "DEFAULT_SETTINGS", "MIN_SIZE"]

#: Smallest image side and window the model can score: one ViT-B/16 patch.
MIN_SIZE = 16


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class InferenceSettings:
    """How a model turns an image and class names into a label map.

    ``pamr``: refine the masks with PAMR; ``kp_w``: weight of the MaskCLIP key-smoothing (KP) branch;
    ``bg_thresh``: a constant background score put in front of the classes (background wins where
    every class scores below it), ``None`` for no background class; ``template``: the prompt-template
    set (:data:`tcl.model.templates.TEMPLATES`). Geometry: the image is resized so its short side is
    ``short_side`` unless its long side would exceed ``long_side``; sliding windows are ``crop`` px,
    every ``stride`` px.
    """

    pamr: bool = True
    bg_thresh: float | None = 0.4
    kp_w: float = 0.3
    template: str = "custom"
    short_side: int = 448
    long_side: int = 2048
    crop: int = 448
    stride: int = 224

    def __post_init__(self) -> None:
        require(isinstance(self.pamr, bool), "pamr", "must be true or false", self.pamr)
        require(self.bg_thresh is None or _is_number(self.bg_thresh), "bg_thresh", "must be a number or None",
                self.bg_thresh)
        require(self.bg_thresh is None or 0.0 <= self.bg_thresh <= 1.0, "bg_thresh",
                "must be in [0, 1] (masks are in [0, 1])", self.bg_thresh)
        require(_is_number(self.kp_w), "kp_w", "must be a number", self.kp_w)
        require(0.0 <= self.kp_w <= 1.0, "kp_w", "must be in [0, 1]", self.kp_w)
        require(self.template in TEMPLATES, "template", f"must be one of {', '.join(TEMPLATES)}", self.template)
        for name in ("short_side", "long_side", "crop", "stride"):
            require(_is_int(getattr(self, name)), name, "must be an integer", getattr(self, name))
        require(self.short_side >= MIN_SIZE, "short_side", f"must be >= {MIN_SIZE}", self.short_side)
        require(self.long_side >= self.short_side, "long_side", f"must be >= short_side ({self.short_side})",
                self.long_side)
        require(self.crop >= MIN_SIZE, "crop", f"must be >= {MIN_SIZE}", self.crop)
        # stride <= crop: otherwise pixels between two windows would get no score at all
        require(1 <= self.stride <= self.crop, "stride", f"must be in [1, crop={self.crop}]", self.stride)


#: The paper's two evaluation settings by name (``evaluate.setting`` in params.yaml).
PRESETS: dict[str, InferenceSettings] = {
    "official": InferenceSettings(),
    "no_pamr": InferenceSettings(pamr=False, bg_thresh=0.5),
}

#: What every entry point uses unless told otherwise.
DEFAULT_SETTINGS: InferenceSettings = PRESETS["official"]
