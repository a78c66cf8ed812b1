"""COCO-Stuff-164k label maps → COCO-Object label maps (inherited from GroupViT).

Official: kakaobrain/tcl bc2b551, convert_dataset/convert_coco_object.py.

Raw ``stuffthingmaps_trainval2017`` PNGs hold COCO category id − 1 (0..181) and 255 for unlabeled.
COCO-Object keeps the 80 thing classes as 1..80 in COCO order and sends every stuff class *and*
unlabeled to 0 = background (nothing is ignored, as in the original protocol).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..errors import TCLError

__all__ = ["COCO_OBJECT_LUT", "THING_RAW_IDS", "convert_label_map", "convert_coco_object",
           "COCOObjectError", "SPLITS", "OUTPUT_SUFFIX"]

SPLITS = ("train2017", "val2017")
OUTPUT_SUFFIX = "_instanceTrainIds.png"
_UNUSED_THING_RAW_IDS = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82}  # COCO ids never used for things
THING_RAW_IDS = tuple(i for i in range(90) if i not in _UNUSED_THING_RAW_IDS)
_STUFF_RAW_IDS = range(91, 182)
_UNLABELED = 255
_INVALID = -1


def _build_lut() -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.int16)
    for index, raw in enumerate(THING_RAW_IDS, start=1):
        lut[raw] = index
    lut[list(_STUFF_RAW_IDS)] = 0
    lut[_UNLABELED] = 0
    return lut


COCO_OBJECT_LUT = _build_lut()
assert len(THING_RAW_IDS) == 80


class COCOObjectError(TCLError, ValueError):
    """Wrong dataset root or unexpected label values."""


def convert_label_map(raw: np.ndarray, name: str = "label map") -> np.ndarray:
    """Map a raw stuff+thing label array (uint8) to COCO-Object ids (uint8)."""
    mapped = COCO_OBJECT_LUT[raw]
    if (mapped == _INVALID).any():
        bad = sorted(set(np.unique(raw[mapped == _INVALID]).tolist()))
        raise COCOObjectError(f"{name}: unexpected label values {bad} (COCO-Stuff raw maps hold 0..181 "
                              "category ids minus one and 255)")
    return mapped.astype(np.uint8)


def _output_path(source: Path, out_dir: Path) -> Path:
    stem = source.name.split(".", 1)[0]
    return out_dir / f"{stem}{OUTPUT_SUFFIX}"


def _convert_file(job: tuple[Path, Path]) -> None:
    source, target = job
    with Image.open(source) as image:
        raw = np.asarray(image)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise COCOObjectError(f"{source}: expected a single-channel 8-bit label map, got {raw.dtype} {raw.shape}")
    with atomic_path(target) as tmp:
        Image.fromarray(convert_label_map(raw, str(source))).save(tmp, format="PNG")


def convert_coco_object(root: str | os.PathLike, out_dir: str | os.PathLike, splits=SPLITS, workers: int = 1,
                        expected_count: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Convert every raw map under ``root/annotations/<split>/`` into ``out_dir/annotations/<split>/``.

    Idempotent: outputs that already exist are skipped. ``expected_count`` (123,287 for the full
    train+val set) is checked against the number of raw maps found. Returns counts of converted,
    skipped and total files. Images are not copied: point the dataset's image folder at ``root``.
    """
    root, out_dir = Path(root), Path(out_dir)
    jobs, total = [], 0
    for split in splits:
        source_dir = root / "annotations" / split
        if not source_dir.is_dir():
            raise COCOObjectError(f"{source_dir} not found: expected the COCO-Stuff-164k root with "
                                  "annotations/{train2017,val2017}/ from stuffthingmaps_trainval2017.zip")
        sources = sorted(p for p in source_dir.glob("*.png") if "TrainIds" not in p.name)
        total += len(sources)
        target_dir = out_dir / "annotations" / split
        target_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(s, t) for s in sources if not (t := _output_path(s, target_dir)).exists()]
    if expected_count is not None and total != expected_count:
        raise COCOObjectError(f"found {total} raw label maps under {root / 'annotations'}, expected "
                              f"{expected_count}: the download is incomplete or the root is wrong")
    done = 0
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_convert_file, jobs, chunksize=16):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _convert_file(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    return {"converted": len(jobs), "skipped": total - len(jobs), "total": total}
