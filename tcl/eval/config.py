"""The ``evaluate:`` section of ``params.yaml``: protocol, settings, data roots and speed knobs.

Validated by :mod:`tcl.config` (unknown keys, wrong types and impossible values fail with one line
naming the dotted key). ``setting`` is the one switch between the paper's two evaluation settings,
the presets of :mod:`tcl.inference.settings` (``official``: Table 2; ``no_pamr``: the appendix table).
``pamr``, ``bg_thresh``, ``kp_w`` and ``template`` left at ``null`` take the setting's value; set
them to override it. :meth:`EvalConfig.settings` gives the resulting :class:`InferenceSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import require
from ..inference.settings import DEFAULT_SETTINGS, PRESETS, InferenceSettings
from ..model.templates import TEMPLATES
from .benchmarks import BENCHMARKS

__all__ = ["Protocol", "Protocols", "DataRoots", "EvalConfig", "SETTINGS", "PRECISIONS", "BASELINES"]

#: ``evaluate.precision``: ``auto`` is resolved for inference by :func:`tcl.runtime.resolve_precision` (bf16
#: on GPUs and on CPUs with native bf16, else fp32); the training tuple is tcl.train.config.PRECISIONS.
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: Reference models scored next to the trained TCL on every benchmark: the same model at step 0
#: (the MaskCLIP-style baseline, as the decoder gates start at 0) and the frozen CLIP's own dense features.
BASELINES = ("step0", "maskclip")


#: ``evaluate.setting``'s choices: the inference presets (defined in :mod:`tcl.inference.settings`).
SETTINGS: dict[str, InferenceSettings] = PRESETS


@dataclass(frozen=True)
class Protocol:
    """Test-time geometry: mmseg ``Resize(scale=(long_side, short_side), keep_ratio=True)``, then
    ``crop``-sized sliding windows every ``stride`` pixels (official: kakaobrain/tcl bc2b551,
    segmentation/configs/_base_/datasets/*.py)."""

    # the paper's geometry, defined once in tcl.inference.settings
    short_side: int = DEFAULT_SETTINGS.short_side
    long_side: int = DEFAULT_SETTINGS.long_side
    crop: int = DEFAULT_SETTINGS.crop
    stride: int = DEFAULT_SETTINGS.stride

    def __post_init__(self) -> None:
        for name in ("short_side", "long_side", "crop", "stride"):
            require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))


@dataclass(frozen=True)
class Protocols:
    """``paper``: the real benchmarks (448/2048/448/224). ``synthetic``: the built-in world, whose
    128-px images and 96-px tiny CLIP want a proportionally smaller geometry."""

    paper: Protocol = field(default_factory=Protocol)
    synthetic: Protocol = field(default_factory=lambda: Protocol(short_side=96, long_side=439, crop=96, stride=48))


@dataclass(frozen=True)
class DataRoots:
    """Dataset folders, relative to the project root (mmseg's standard layouts; see the registry)."""

    voc: str = "data/VOCdevkit/VOC2012"
    context: str = "data/VOCdevkit/VOC2010"
    coco_stuff: str = "data/coco_stuff164k"
    coco_object: str = "data/coco_object"  # stages/convert_coco_object.py output; images from coco_stuff
    cityscapes: str = "data/cityscapes"
    ade20k: str = "data/ade/ADEChallengeData2016"
    synthetic_voc: str = "data/synthetic/VOCdevkit/VOC2012"
    synthetic_coco_stuff: str = "data/synthetic/coco_stuff164k"
    synthetic_coco_object: str = "data/synthetic/coco_object"


@dataclass(frozen=True)
class EvalConfig:
    setting: str = "official"
    pamr: bool | None = None
    bg_thresh: float | None = None
    kp_w: float | None = None
    template: str | None = None
    protocols: Protocols = field(default_factory=Protocols)
    data_roots: DataRoots = field(default_factory=DataRoots)
    benchmarks: tuple[str, ...] = ("synthetic_voc", "synthetic_voc20", "synthetic_coco_stuff",
                                   "synthetic_coco_object")
    bg_thresh_candidates: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
    bg_thresh_split: str = "t_synthetic_voc"  # training split the pipeline chooses bg_thresh on (unless fixed)
    window_batch: int = 16  # sliding windows per forward pass (from one or several images)
    image_batch: int = 4  # images whose windows are batched together
    num_workers: int = 2  # data-loader processes (decode + resize)
    precision: str = "fp32"  # fp32 (exact) | bf16 | fp16 autocast | auto (bf16 where the device has it natively)
    overlays: int = 4  # qualitative image | ground truth | prediction panels per benchmark
    # class text embeddings cached here (relative to the project root; null: no cache), see tcl.eval.text_cache
    text_cache: str | None = ".cache/text_embeddings"

    def __post_init__(self) -> None:
        require(self.setting in SETTINGS, "setting", f"must be one of {', '.join(SETTINGS)}", self.setting)
        for name in ("bg_thresh", "kp_w"):
            value = getattr(self, name)
            require(value is None or 0 <= value <= 1, name, "must be in [0, 1] (or null: the setting's)", value)
        require(self.template is None or self.template in TEMPLATES, "template",
                f"must be one of {', '.join(TEMPLATES)}", self.template)
        require(all(b in BENCHMARKS for b in self.benchmarks), "benchmarks",
                f"must name known benchmarks ({', '.join(BENCHMARKS)})", self.benchmarks)
        require(len(self.bg_thresh_candidates) > 0 and all(0 <= t <= 1 for t in self.bg_thresh_candidates),
                "bg_thresh_candidates", "must be a non-empty list of values in [0, 1]", self.bg_thresh_candidates)
        require(self.bg_thresh_split in BENCHMARKS and BENCHMARKS[self.bg_thresh_split].with_background,
                "bg_thresh_split", "must be a known benchmark with a background class (a training split, t_*)",
                self.bg_thresh_split)
        for name, low in (("window_batch", 1), ("image_batch", 1), ("num_workers", 0)):
            require(getattr(self, name) >= low, name, f"must be >= {low}", getattr(self, name))
        require(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)
        require(self.overlays >= 0, "overlays", "must be >= 0", self.overlays)
        require(self.text_cache is None or self.text_cache.strip() != "", "text_cache",
                "must be a folder (or null: no cache)", self.text_cache)

    def settings(self, protocol: str = "paper") -> InferenceSettings:
        """The setting's preset with this config's explicit overrides applied, and the window geometry
        of ``protocol`` (``paper`` or ``synthetic``, a benchmark's :attr:`~tcl.eval.Benchmark.protocol`)."""
        overrides = {name: getattr(self, name) for name in ("pamr", "bg_thresh", "kp_w", "template")
                     if getattr(self, name) is not None}
        geometry: Protocol = getattr(self.protocols, protocol)
        return replace(SETTINGS[self.setting], **overrides, short_side=geometry.short_side,
                       long_side=geometry.long_side, crop=geometry.crop, stride=geometry.stride)
