"""Zero-shot segmentation benchmarks with the paper's protocol (docs/evaluation.md) on mmsegmentation 1.x.

``BENCHMARKS`` / :func:`get_benchmark`: the registry; :class:`EvalConfig`: the ``evaluate:`` section
of ``params.yaml``; :func:`evaluate_benchmark`: one benchmark → mIoU, aAcc and per-class IoU;
:func:`sliding_window_scores`: the protocol's sliding-window inference; :func:`sweep_bg_thresh`:
pick the background threshold on a training split. mmseg is imported only when data is loaded.
"""

from .benchmarks import BENCHMARKS, PREPARE_URL, Benchmark, UnknownBenchmarkError, get_benchmark
from .config import PRECISIONS, SETTINGS, DataRoots, EvalConfig, Protocol, Protocols, Settings
from .datasets import EvalDataError
from .evaluate import evaluate_benchmark, sweep_bg_thresh
from .sliding import sliding_window_scores, sliding_window_scores_many, window_starts

__all__ = ["BENCHMARKS", "PREPARE_URL", "Benchmark", "UnknownBenchmarkError", "get_benchmark", "EvalConfig",
           "Protocol", "Protocols", "DataRoots", "Settings", "SETTINGS", "PRECISIONS", "EvalDataError",
           "evaluate_benchmark", "sweep_bg_thresh", "sliding_window_scores", "sliding_window_scores_many",
           "window_starts"]
