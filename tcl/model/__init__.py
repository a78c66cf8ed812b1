"""TCL model components on open_clip."""

from .._exports import lazy_exports

_WHERE = {
    "TCL": "tcl",
    "TCLConfig": "config",
    "ClipSettings": "config",
    "check_clip_config": "config",
    "create_tcl": "factory",
    "create_clip": "factory",
    "read_weights": "factory",
    "WeightsError": "factory",
    "OPENAI_VIT_B16": "factory",
    "Masker": "masker",
    "Sim2Mask": "masker",
    "gumbel_sigmoid": "masker",
    "pamr": "pamr",
    "TEMPLATES": "templates",
    "get_templates": "templates",
    "IMAGENET_MEAN": "tcl",
    "IMAGENET_STD": "tcl",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
