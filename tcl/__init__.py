"""TCL: open-world semantic segmentation learned from image-text pairs (Cha et al., CVPR 2023).

The library behind the pipeline: configuration (``tcl.config``), training (``tcl.train``), evaluation
(``tcl.eval``), serving (``tcl.serving``), inference (``tcl.inference``), data (``tcl.data``), the model
(``tcl.model``) and the runtime below them. It never imports DVC or Prefect (orchestration lives in
``pipelines/`` and ``stages/``); packages import their modules on first use.
"""

from ._exports import lazy_exports

_WHERE = {
    "TCL": "model",
    "TCLConfig": "model",
    "create_clip": "model",
    "create_tcl": "model",
}
__all__ = list(_WHERE)
__version__ = "0.1.0"
__getattr__ = lazy_exports(__name__, _WHERE)
