"""Make mmsegmentation importable on ``mmcv-lite`` (mmcv without compiled ops).

mmsegmentation 1.2.x needs mmcv < 2.2. The full mmcv wheel must be compiled from source on most
machines (about an hour on 2 cores), while ``mmcv-lite`` installs in seconds but lacks
``mmcv._ext``. Importing ``mmcv.ops`` then fails, and with it ``mmseg.datasets``,
``mmseg.evaluation`` and ``mmseg.models``, only because a few mmseg modules import names from
``mmcv.ops`` at module level. None of those compiled ops is used by TCL.

:func:`ensure_mmseg_importable` installs a minimal ``mmcv.ops`` package in ``sys.modules`` that
exposes the pure-PyTorch ``point_sample`` from mmcv's own source file and, for the remaining names
that mmseg imports eagerly, placeholders that raise a clear error if they are ever *called*.
With a full mmcv (``mmcv._ext`` importable) it does nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

__all__ = ["ensure_mmseg_importable", "has_compiled_mmcv_ops"]

# Names that mmseg modules import from ``mmcv.ops`` at import time (mmseg 1.2.2).
_COMPILED_ONLY = ("sigmoid_focal_loss", "CrissCrossAttention", "PSAMask", "DeformConv2d",
                  "ModulatedDeformConv2d")


def has_compiled_mmcv_ops() -> bool:
    """True when mmcv's compiled extension (full mmcv) is installed."""
    return importlib.util.find_spec("mmcv._ext") is not None


def _unavailable(name: str):
    def op(*args, **kwargs):
        raise RuntimeError(
            f"mmcv.ops.{name} needs the compiled mmcv package; this environment has mmcv-lite. "
            "Install full mmcv (mmcv<2.2) to use it.")
    op.__name__ = name
    return op


def ensure_mmseg_importable() -> bool:
    """Provide ``mmcv.ops`` for mmcv-lite; returns True when the shim was installed.

    Idempotent and a no-op with full mmcv, or when ``mmcv.ops`` is already importable.
    """
    existing = sys.modules.get("mmcv.ops")
    if existing is not None and getattr(existing, "__tcl_shim__", False):
        return True
    if has_compiled_mmcv_ops() or existing is not None:
        return False
    mmcv = importlib.import_module("mmcv")
    ops_dir = Path(mmcv.__file__).parent / "ops"
    shim = types.ModuleType("mmcv.ops", doc="mmcv.ops subset for mmcv-lite (see tcl.compat.mmcv_ops)")
    shim.__path__ = [str(ops_dir)]  # submodules resolve to mmcv's own files without its __init__
    shim.__tcl_shim__ = True
    sys.modules["mmcv.ops"] = shim
    mmcv.ops = shim
    point_sample = importlib.import_module("mmcv.ops.point_sample")  # pure PyTorch
    shim.point_sample = point_sample.point_sample
    shim.bilinear_grid_sample = point_sample.bilinear_grid_sample
    for name in _COMPILED_ONLY:
        setattr(shim, name, _unavailable(name))
    return True
