"""Benchmark data on mmsegmentation 1.x: dataset classes, root checks and the test pipeline.

mmseg's dataset classes list the files, carry the class names (``METAINFO``, used verbatim, as the
official segmentation/evaluation/builder.py does) and mark ``reduce_zero_label``; two
``BaseSegDataset`` subclasses are registered for the benchmarks mmseg lacks (official
segmentation/datasets/): ``PascalVOC20Dataset`` (the 20 VOC classes, background ignored) and
``COCOObjectDataset`` (background + the 80 COCO things, ``_instanceTrainIds.png``). The test
pipeline is mmseg's: ``LoadImageFromFile`` (cv2, BGR) → ``Resize(scale=(long, short),
keep_ratio=True)`` → ``LoadAnnotations`` (original-size ground truth, reduce_zero_label applied at
load time).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import TCLError
from .benchmarks import Benchmark
from .config import DataRoots, Protocol

__all__ = ["EvalDataError", "benchmark_paths", "check_layout", "build_dataset", "EvalSamples", "class_names"]


class EvalDataError(TCLError, ValueError):
    """Benchmark data that is missing, laid out differently, or unreadable."""


def _import_mmseg():
    """mmseg on mmcv-lite, with the two extra dataset classes registered."""
    from . import mmseg_datasets  # noqa: F401  (mmcv-lite shim first, then PascalVOC20Dataset, COCOObjectDataset)

    return importlib.import_module("mmseg.datasets")


def benchmark_paths(bench: Benchmark, roots: DataRoots, project_root: str | os.PathLike = ".") -> dict[str, Path]:
    """Absolute image folder, annotation folder and split file (or ``None``) of ``bench``."""
    base = Path(project_root).resolve()
    ann_root = base / getattr(roots, bench.root)
    img_root = base / getattr(roots, bench.image_root) if bench.image_root else ann_root
    return {"images": img_root / bench.img_dir, "annotations": ann_root / bench.ann_dir,
            "split": ann_root / bench.split if bench.split else None, "root": ann_root}


def check_layout(bench: Benchmark, roots: DataRoots, project_root: str | os.PathLike = ".") -> dict[str, Path]:
    """Fail with the expected layout and the preparation guide when a folder or split file is missing."""
    paths = benchmark_paths(bench, roots, project_root)
    for key, path in paths.items():
        if key == "root" or path is None:
            continue
        if not (path.is_file() if key == "split" else path.is_dir()):
            root_key = bench.image_root if key == "images" and bench.image_root else bench.root
            raise EvalDataError(
                f"benchmark {bench.name!r}: {path} not found (evaluate.data_roots.{root_key} = "
                f"{getattr(roots, root_key)!r}); expected {bench.layout}; see {bench.prepare_url}")
    return paths


def build_dataset(bench: Benchmark, roots: DataRoots, protocol: Protocol, project_root: str | os.PathLike = "."):
    """The mmseg dataset of ``bench`` with the protocol's test pipeline (transform objects)."""
    paths = check_layout(bench, roots, project_root)
    datasets = _import_mmseg()
    from mmcv.transforms import LoadImageFromFile, Resize
    from mmseg.registry import DATASETS

    pipeline = [LoadImageFromFile(), Resize(scale=(protocol.long_side, protocol.short_side), keep_ratio=True),
                datasets.transforms.LoadAnnotations()]
    kwargs: dict[str, Any] = dict(data_prefix=dict(img_path=str(paths["images"]),
                                                   seg_map_path=str(paths["annotations"])),
                                  pipeline=pipeline, test_mode=True, serialize_data=False)
    if paths["split"] is not None:
        kwargs["ann_file"] = str(paths["split"])
    dataset_class = DATASETS.get(bench.dataset)
    if bench.classes is not None:  # mmseg relabels the rest of the dataset's classes to 255 (ignored)
        kwargs["metainfo"] = {"classes": _vocabulary(dataset_class, bench)}
    dataset = dataset_class(**kwargs)
    if len(dataset) == 0:
        raise EvalDataError(f"benchmark {bench.name!r}: no images found in {paths['images']}; expected "
                            f"{bench.layout}; see {bench.prepare_url}")
    return dataset


def _vocabulary(dataset_class, bench: Benchmark) -> tuple[str, ...]:
    """``bench.classes`` in the dataset class's order (so label ids keep its order)."""
    known = list(dataset_class.METAINFO["classes"])
    unknown = sorted(set(bench.classes) - set(known))
    if unknown:
        raise EvalDataError(f"benchmark {bench.name!r}: classes {unknown} are not classes of {bench.dataset}")
    return tuple(name for name in known if name in bench.classes)


def class_names(dataset, with_background: bool) -> list[str]:
    """The prompt class names: mmseg's ``classes`` verbatim, without a leading "background"."""
    names = list(dataset.metainfo["classes"])
    if with_background:
        if names[0] != "background":
            raise EvalDataError(f"{type(dataset).__name__}: expected 'background' as the first class, got {names[0]!r}")
        names = names[1:]
    return names


class EvalSamples(Dataset):
    """The pipeline applied to chosen indices of an mmseg dataset, for a ``DataLoader``.

    Returns ``{"index", "img_path", "image" (resized, HWC uint8 BGR), "gt" (original size, uint8)}``.
    A file that cannot be read comes back as ``{"index", "error"}`` naming it, so that the error
    reaches the main process as one line instead of a worker traceback.
    """

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        info = self.dataset.get_data_info(index)
        results = dict(info)
        step = "image"
        try:
            for transform in self.dataset.pipeline.transforms:
                if type(transform).__name__ == "LoadAnnotations":
                    step = "label map"
                results = transform(results)
                if results is None:
                    raise OSError("unreadable")
        except Exception as err:  # any decoder error: report the file, not the library's stack
            path = info["img_path"] if step == "image" else info["seg_map_path"]
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return {"index": index, "error": f"cannot read {step} {path}: {detail}"}
        gt = results["gt_seg_map"]
        if tuple(gt.shape[:2]) != tuple(results["ori_shape"]):
            return {"index": index, "error": f"label map {info['seg_map_path']} is {gt.shape[1]}x{gt.shape[0]}, "
                                             f"its image {info['img_path']} is {results['ori_shape'][1]}x"
                                             f"{results['ori_shape'][0]}"}
        return {"index": index, "img_path": info["img_path"], "image": np.ascontiguousarray(results["img"]),
                "gt": np.ascontiguousarray(gt)}
