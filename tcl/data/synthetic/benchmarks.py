"""The synthetic world in the benchmarks' label spaces: mmseg class ids, label maps and the VOC palette.

:func:`benchmark_ids` looks every vocabulary name up in mmseg's ``METAINFO`` (never hard-coded, so
a typo fails loudly instead of scoring the wrong class); :func:`voc_label_map` and
:func:`coco_stuff_label_maps` turn a :class:`~.render.Scene` into PASCAL VOC indices (with a 255
rim) and COCO-Stuff-164k raw and mmseg training-id maps, written with VOC's standard colour palette.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import SyntheticError
from .render import Scene, _eroded
from .vocabulary import OBJECT_KINDS, STUFF_KINDS

__all__ = ["VOC_BOUNDARY", "BenchmarkIds", "benchmark_ids", "voc_label_map", "coco_stuff_label_maps"]

VOC_BOUNDARY = 255  # real VOC marks object outlines as "void"; mmseg ignores 255
_COCO_UNLABELED = 255


@dataclass(frozen=True)
class BenchmarkIds:
    """Label values of every vocabulary entry in the benchmarks' id spaces."""

    voc: dict[str, int]  # object kind -> VOC index (1..20); background is 0
    coco_raw: dict[str, int]  # object kind or stuff kind -> COCO-Stuff raw id (category id - 1)
    coco_train: dict[str, int]  # same keys -> mmseg training id (0..170)
    coco_raw_to_train: tuple[int, ...]  # 256-entry lookup table, 255 elsewhere


def _index_of(classes: tuple[str, ...], name: str, dataset: str) -> int:
    if name not in classes:
        raise SyntheticError(f"class {name!r} not found in mmseg {dataset}.METAINFO['classes']")
    return classes.index(name)


@lru_cache(maxsize=1)
def benchmark_ids() -> BenchmarkIds:
    """Look up every vocabulary name in mmseg's dataset classes (imports mmseg, a few seconds).

    COCO-Stuff's 171 training ids list the 80 things then the 91 stuff classes in raw-id order, so
    training id i is the i-th smallest raw id in use: :data:`~tcl.data.coco_object.THING_RAW_IDS`
    followed by 91..181.
    """
    from tcl.compat.mmcv_ops import ensure_mmseg_importable

    ensure_mmseg_importable()
    from mmseg.datasets import COCOStuffDataset, PascalVOCDataset

    from ..coco_object import THING_RAW_IDS

    voc_classes = tuple(PascalVOCDataset.METAINFO["classes"])
    coco_classes = tuple(COCOStuffDataset.METAINFO["classes"])
    raw_ids = (*THING_RAW_IDS, *range(91, 182))
    if len(coco_classes) != len(raw_ids):
        raise SyntheticError(f"mmseg COCOStuffDataset lists {len(coco_classes)} classes, expected {len(raw_ids)}")
    voc = {k.name: _index_of(voc_classes, k.voc_name, "PascalVOCDataset") for k in OBJECT_KINDS}
    coco_names = {k.name: k.coco_name for k in OBJECT_KINDS} | {s.name: s.coco_stuff_name for s in STUFF_KINDS}
    coco_train = {key: _index_of(coco_classes, name, "COCOStuffDataset") for key, name in coco_names.items()}
    for kind in OBJECT_KINDS:
        if coco_train[kind.name] >= len(THING_RAW_IDS):
            raise SyntheticError(f"{kind.coco_name!r} is a COCO-Stuff stuff class, expected a thing")
    for stuff in STUFF_KINDS:
        if coco_train[stuff.name] < len(THING_RAW_IDS):
            raise SyntheticError(f"{stuff.coco_stuff_name!r} is a COCO thing class, expected a stuff class")
    lut = [_COCO_UNLABELED] * 256
    for train_id, raw in enumerate(raw_ids):
        lut[raw] = train_id
    return BenchmarkIds(voc=voc, coco_raw={key: raw_ids[i] for key, i in coco_train.items()},
                        coco_train=coco_train, coco_raw_to_train=tuple(lut))


def voc_label_map(scene: Scene, ids: BenchmarkIds) -> np.ndarray:
    """VOC indices: 0 background, the kind's class index, 255 on each object's 1-px outer rim."""
    lut = np.array([0, *(ids.voc[k] for k in scene.objects)], np.uint8)
    labels = lut[scene.instances]
    for number in range(1, len(scene.objects) + 1):
        mask = scene.instances == number
        labels[mask & ~_eroded(mask)] = VOC_BOUNDARY
    return labels


def coco_stuff_label_maps(scene: Scene, ids: BenchmarkIds) -> tuple[np.ndarray, np.ndarray]:
    """(raw map: COCO category id − 1, mmseg training-id map); background carries its stuff class."""
    stuff_raw = np.array([ids.coco_raw[s] for s in scene.stuffs], np.uint8)
    thing_raw = np.array([0, *(ids.coco_raw[k] for k in scene.objects)], np.uint8)
    raw = np.where(scene.instances > 0, thing_raw[scene.instances], stuff_raw[scene.stuff]).astype(np.uint8)
    return raw, np.asarray(ids.coco_raw_to_train, np.uint8)[raw]


@lru_cache(maxsize=1)
def _voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), as in the real SegmentationClass PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
