"""mmseg's ``IoUMetric`` over a benchmark, accumulated per image and summed across processes.

Per image, :meth:`IoUMetric.intersect_and_union` gives the intersection, union, prediction and
ground-truth areas per class (``ignore_index`` 255 skipped); the totals are summed in float64 (exact
pixel counts, where mmseg sums float32) and, under ``torch.distributed``, all-reduced so that every
rank holds the dataset totals. The summary is IoUMetric's: IoU and accuracy per class, their
``nanmean`` ×100 rounded to 2 decimals (classes absent from both prediction and ground truth are
skipped, as mmseg's mIoU that the official main.py ``validate_seg`` uses), and the overall pixel
accuracy aAcc.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch
import torch.distributed as dist

from ..runtime import is_distributed

__all__ = ["AreaTotals"]

IGNORE_INDEX = 255


def _iou_metric():
    from . import mmseg_datasets  # noqa: F401  (mmcv-lite shim before any mmseg import)

    return importlib.import_module("mmseg.evaluation").IoUMetric


class AreaTotals:
    """Running per-class area totals of one benchmark."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.areas = torch.zeros(4, len(self.class_names), dtype=torch.float64)  # intersect, union, pred, label
        self.images = 0

    def add(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image: predicted labels and ground truth [H, W] (255 = ignored)."""
        parts = _iou_metric().intersect_and_union(pred, label.to(pred), len(self.class_names), IGNORE_INDEX)
        self.areas += torch.stack([p.to(torch.float64) for p in parts])
        self.images += 1

    def all_reduce(self) -> None:
        """Sum the totals of every rank (no-op outside torch.distributed)."""
        if not is_distributed():
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        packed = torch.cat([self.areas.flatten(), torch.tensor([float(self.images)], dtype=torch.float64)])
        packed = packed.to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        self.areas = packed[:-1].view_as(self.areas).clone()
        self.images = int(packed[-1].item())

    def summary(self) -> dict:
        """mIoU, mAcc, aAcc (×100, 2 decimals) and per-class IoU / accuracy (``None`` for NaN)."""
        ret = _iou_metric().total_area_to_metrics(*self.areas, ["mIoU"])
        iou, acc = np.asarray(ret["IoU"], dtype=np.float64), np.asarray(ret["Acc"], dtype=np.float64)

        def percent(value: float) -> float | None:
            return None if math.isnan(value) else float(np.round(value * 100, 2))  # as IoUMetric rounds

        with np.errstate(invalid="ignore"):
            return {
                "miou": percent(np.nanmean(iou)) if not np.isnan(iou).all() else None,
                "macc": percent(np.nanmean(acc)) if not np.isnan(acc).all() else None,
                "aacc": percent(float(ret["aAcc"])),
                "per_class_iou": {n: percent(v) for n, v in zip(self.class_names, iou.tolist(), strict=True)},
                "per_class_acc": {n: percent(v) for n, v in zip(self.class_names, acc.tolist(), strict=True)},
            }

    def print_table(self, prefix: str) -> dict:
        """Print mmseg's own per-class table (through IoUMetric.compute_metrics); returns its summary."""
        metric = _iou_metric()(iou_metrics=["mIoU"], prefix=prefix)
        metric.dataset_meta = {"classes": tuple(self.class_names)}
        return metric.compute_metrics([tuple(self.areas)])
