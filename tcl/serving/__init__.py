"""Serving: the MLflow pyfunc segmentation model and the web demo.

Submodules are imported on first use, so the web demo does not import MLflow.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "TCLSegmentationModel": "pyfunc",
    "save_segmentation_model": "pyfunc",
    "log_segmentation_model": "pyfunc",
    "segmentation_signature": "pyfunc",
    "encode_image": "pyfunc",
    "decode_label_map": "pyfunc",
    "DemoServer": "demo",
    "DemoLimits": "demo",
    "serve_demo": "demo",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
