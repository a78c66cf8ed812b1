"""Compatibility with the official TCL release and with mmcv-lite."""

from .._exports import lazy_exports

_WHERE = {
    "load_official_checkpoint": "official",
    "export_official_state_dict": "official",
    "ensure_mmseg_importable": "mmcv_ops",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
