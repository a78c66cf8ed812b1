"""The two mmseg dataset classes the original code added (kakaobrain/tcl bc2b551,
segmentation/datasets/), registered on import.

Importing this module imports mmsegmentation; :func:`tcl.eval.datasets.build_dataset` does so only
when a benchmark is built.
"""

from __future__ import annotations

import os

from tcl.compat.mmcv_ops import ensure_mmseg_importable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (imported by mmseg) checks online
ensure_mmseg_importable()

from mmseg.datasets import BaseSegDataset, COCOStuffDataset, PascalVOCDataset  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402

__all__ = ["PascalVOC20Dataset", "COCOObjectDataset"]


@DATASETS.register_module(force=True)
class PascalVOC20Dataset(PascalVOCDataset):
    """PASCAL VOC without background: the 20 object classes, label 0 ignored (reduce_zero_label)."""

    METAINFO = dict(classes=tuple(PascalVOCDataset.METAINFO["classes"][1:]),
                    palette=list(PascalVOCDataset.METAINFO["palette"][1:]))

    def __init__(self, ann_file, **kwargs) -> None:
        super().__init__(ann_file=ann_file, reduce_zero_label=True, **kwargs)


@DATASETS.register_module(force=True)
class COCOObjectDataset(BaseSegDataset):
    """COCO-Object: 0 = background (stuff and unlabeled), 1..80 = the COCO things in COCO-Stuff order,
    labels in ``*_instanceTrainIds.png`` (official segmentation/datasets/coco_object.py)."""

    METAINFO = dict(classes=("background", *COCOStuffDataset.METAINFO["classes"][:80]),
                    palette=[[0, 0, 0], *COCOStuffDataset.METAINFO["palette"][:80]])

    def __init__(self, img_suffix=".jpg", seg_map_suffix="_instanceTrainIds.png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
