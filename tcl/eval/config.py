"""The ``evaluate:`` section of ``params.yaml``: protocol, settings, data roots and speed knobs.

Validated by :mod:`tcl.config` (unknown keys, wrong types and impossible values fail with one line
naming the dotted key). ``setting`` is the one switch between the paper's two evaluation settings,
the presets of :mod:`tcl.inference.settings` (``official``: Table 2; ``no_pamr``: the appendix table).
``pamr``, ``bg_thresh``, ``kp_w`` and ``template`` left at ``null`` take the setting's value; set
them to override it. :meth:`EvalConfig.settings` gives the resulting :class:`InferenceSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..inference.settings import PRESETS, InferenceSettings

__all__ = ["Protocol", "Protocols", "DataRoots", "EvalConfig", "SETTINGS", "PRECISIONS", "BASELINES"]

PRECISIONS = ("fp32", "bf16", "fp16")
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

    short_side: int = 448
    long_side: int = 2048
    crop: int = 448
    stride: int = 224


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
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (GPU option, checked against fp32)
    overlays: int = 4  # qualitative image | ground truth | prediction panels per benchmark

    def settings(self, protocol: str = "paper") -> InferenceSettings:
        """The setting's preset with this config's explicit overrides applied, and the window geometry
        of ``protocol`` (``paper`` or ``synthetic``, a benchmark's :attr:`~tcl.eval.Benchmark.protocol`)."""
        overrides = {name: getattr(self, name) for name in ("pamr", "bg_thresh", "kp_w", "template")
                     if getattr(self, name) is not None}
        geometry: Protocol = getattr(self.protocols, protocol)
        return replace(SETTINGS[self.setting], **overrides, short_side=geometry.short_side,
                       long_side=geometry.long_side, crop=geometry.crop, stride=geometry.stride)
