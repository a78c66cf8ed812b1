"""The ``train`` and ``prepare_clip`` sections of ``params.yaml``, and the training precisions.

Torch-free, so :mod:`tcl.config` validates a parameter file without loading torch; each section
checks its own fields in ``__post_init__`` (:func:`tcl.errors.require`), also when built in code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.config import SHUFFLE_MODES
from ..errors import require
from ..eval.benchmarks import BENCHMARKS

__all__ = ["PRECISIONS", "TrainConfig", "ClipPretrainConfig"]

#: ``train.precision``: ``auto`` is resolved per device by :func:`tcl.runtime.resolve_precision`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _at_least(config: object, low: float, *names: str) -> None:
    for name in names:
        require(getattr(config, name) >= low, name, f"must be >= {low}", getattr(config, name))


def _above(config: object, low: float, *names: str) -> None:
    for name in names:
        require(getattr(config, name) > low, name, f"must be > {low}", getattr(config, name))


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule and bookkeeping (defaults: the released recipe, kakaobrain/tcl bc2b551 configs/tcl.yml)."""

    steps: int = 50000  # optimizer steps
    ust_steps: int = 30000  # decoder-only phase: the masker's block copies stay fixed before this step
    lr: float = 3e-4  # for a global batch of 4096; scaled linearly unless scale_lr is false
    min_lr: float = 4e-5
    warmup_steps: int = 15000
    scale_lr: bool = True
    weight_decay: float = 0.05
    adam_eps: float = 1e-6
    grad_clip: float = 5.0
    grad_accum: int = 1  # micro-batches per optimizer step: global batch = batch_size × world × grad_accum
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16
    seed: int = 0
    log_every: int = 20
    image_every: int = 500  # mask previews logged to MLflow
    checkpoint_every: int = 5000
    val_every: int = 5000  # 0: validate only at the end
    val_benchmarks: tuple[str, ...] = ("t_voc20", "t_context59")
    val_metric: str = "avg_miou"  # best.pt maximises val/<val_metric>
    max_nonfinite: int = 20  # stop after this many consecutive steps with non-finite loss or gradients
    # The control experiments: each image is trained with another image's caption ("any"), or with
    # one that names none of the kinds its own names ("disjoint"); docs/training.md.
    shuffle_captions: str = "none"

    def __post_init__(self) -> None:
        _at_least(self, 1, "steps")
        _at_least(self, 0, "ust_steps")
        _above(self, 0, "lr")
        _at_least(self, 0, "min_lr", "warmup_steps", "weight_decay")
        _above(self, 0, "adam_eps", "grad_clip")
        _at_least(self, 1, "grad_accum")
        require(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)
        _at_least(self, 1, "log_every")
        _at_least(self, 0, "image_every")
        _at_least(self, 1, "checkpoint_every")
        _at_least(self, 0, "val_every")
        require(all(b in BENCHMARKS for b in self.val_benchmarks), "val_benchmarks",
                f"must name known benchmarks ({', '.join(BENCHMARKS)})", self.val_benchmarks)
        if self.val_benchmarks:  # without validation best.pt is the final model: no metric to choose by
            metrics = {"avg_miou", *(f"{name}_miou" for name in self.val_benchmarks)}
            require(self.val_metric in metrics, "val_metric", f"must be one of {', '.join(sorted(metrics))}",
                    self.val_metric)
        _at_least(self, 1, "max_nonfinite")
        require(self.shuffle_captions in SHUFFLE_MODES, "shuffle_captions",
                f"must be one of {', '.join(SHUFFLE_MODES)}", self.shuffle_captions)


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Contrastive pre-training of the tiny CLIP (``prepare_clip:``; see :mod:`tcl.train.clip_pretraining`)."""

    steps: int = 1500
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 50

    def __post_init__(self) -> None:
        _at_least(self, 1, "steps")
        _above(self, 0, "lr")
        _at_least(self, 0, "min_lr", "warmup_steps", "weight_decay")
        _above(self, 0, "grad_clip")
        _at_least(self, 1, "log_every")
