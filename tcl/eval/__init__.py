"""Zero-shot segmentation benchmarks with the paper's protocol (docs/evaluation.md) on mmsegmentation 1.x.

``BENCHMARKS`` / :func:`get_benchmark`: the registry; :class:`EvalConfig`: the ``evaluate:`` section
of ``params.yaml``; :func:`evaluate_benchmark`: one benchmark → mIoU, aAcc and per-class IoU;
the sliding-window inference it uses is :mod:`tcl.inference.sliding`; :func:`sweep_bg_thresh`:
pick the background threshold on a training split. mmseg is imported only when data is loaded.
"""

from .._exports import lazy_exports

_WHERE = {
    "BENCHMARKS": "benchmarks",
    "PREPARE_URL": "benchmarks",
    "Benchmark": "benchmarks",
    "UnknownBenchmarkError": "benchmarks",
    "get_benchmark": "benchmarks",
    "EvalConfig": "config",
    "Protocol": "config",
    "Protocols": "config",
    "DataRoots": "config",
    "SETTINGS": "config",
    "PRECISIONS": "config",
    "EvalDataError": "datasets",
    "evaluate_benchmark": "evaluate",
    "sweep_bg_thresh": "evaluate",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
