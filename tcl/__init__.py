"""TCL: open-world semantic segmentation learned from image-text pairs (Cha et al., CVPR 2023).

The library behind the pipeline: model (``tcl.model``), official-checkpoint compatibility
(``tcl.compat``) and, in later modules, data, training and evaluation. It imports without DVC,
Prefect or MLflow.
"""

from .model import TCL, TCLConfig, create_clip, create_tcl

__all__ = ["TCL", "TCLConfig", "create_clip", "create_tcl"]
__version__ = "0.1.0"
