"""Compatibility with the official TCL release and with mmcv-lite."""

from .mmcv_ops import ensure_mmseg_importable
from .official import export_official_state_dict, load_official_checkpoint

__all__ = ["load_official_checkpoint", "export_official_state_dict", "ensure_mmseg_importable"]
