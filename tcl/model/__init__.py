"""TCL model components on open_clip."""

from .factory import OPENAI_VIT_B16, WeightsError, create_clip, create_tcl, read_weights
from .masker import Masker, Sim2Mask, gumbel_sigmoid
from .pamr import pamr
from .tcl import IMAGENET_MEAN, IMAGENET_STD, TCL, TCLConfig
from .templates import TEMPLATES, get_templates

__all__ = [
    "TCL", "TCLConfig", "create_tcl", "create_clip", "read_weights", "WeightsError", "OPENAI_VIT_B16",
    "Masker", "Sim2Mask", "gumbel_sigmoid", "pamr", "TEMPLATES", "get_templates",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
