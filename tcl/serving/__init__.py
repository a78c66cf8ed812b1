"""Serving: the MLflow pyfunc segmentation model and the web demo.

Submodules are imported on first use, so the web demo does not import MLflow.
"""

from .._exports import lazy_exports

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
__getattr__ = lazy_exports(__name__, _WHERE)
