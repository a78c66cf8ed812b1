"""Tiny benchmark datasets in the real folder layouts, and a colour-keyed predictor with known outputs.

Every dataset holds 24×32 images (PNG bytes, also under ``.jpg`` names, so colours are exact) drawn
from one layout: class X's colour on the left half with a 12×4 block of class Y's colour, grey
elsewhere. The ground truth differs from the drawing in known places (X stops at column 12, Y covers
only the lower 8×4 block, row 0 is ignored), so the IoUs can be worked out by hand. The second image
is the mirror of the first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tcl.eval import DataRoots, EvalConfig, Protocol, Protocols
from tcl.model.tcl import IMAGENET_MEAN, IMAGENET_STD

RED, BLUE, GREY = (230, 30, 30), (30, 30, 230), (128, 128, 128)
HEIGHT, WIDTH = 24, 32

ROOTS = DataRoots(voc="data/VOCdevkit/VOC2012", context="data/VOCdevkit/VOC2010", coco_stuff="data/coco_stuff164k",
                  coco_object="data/coco_object", cityscapes="data/cityscapes", ade20k="data/ade/ADEChallengeData2016",
                  synthetic_voc="data/synthetic/VOCdevkit/VOC2012",
                  synthetic_coco_stuff="data/synthetic/coco_stuff164k",
                  synthetic_coco_object="data/synthetic/coco_object")
# 24×32 images at scale 1 (short side 24, long side ≤ 64), 16-px windows every 8 px: 2×3 overlapping windows.
TINY_PROTOCOL = Protocol(short_side=HEIGHT, long_side=64, crop=16, stride=8)


def tiny_config(**changes) -> EvalConfig:
    base = EvalConfig(protocols=Protocols(paper=TINY_PROTOCOL, synthetic=TINY_PROTOCOL), data_roots=ROOTS,
                      num_workers=0, image_batch=2, window_batch=4, overlays=0)
    return replace(base, **changes)


def drawing_and_truth(x: int, y: int, rest: int, ignore: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, label file contents) of the first image; label values are those of the file."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = GREY
    image[:, :16] = RED
    image[12:, 8:12] = BLUE
    labels = np.full((HEIGHT, WIDTH), rest, np.uint8)
    labels[:, :12] = x
    labels[16:, 8:12] = y
    labels[0] = ignore
    return image, labels


def expected_prediction(x: int, y: int) -> np.ndarray:
    """What the colour predictor outputs for the first image (0 on grey: background, or class 0)."""
    pred = np.zeros((HEIGHT, WIDTH), np.int64)
    pred[:, :16] = x
    pred[12:, 8:12] = y
    return pred


def reference_iou(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int) -> dict:
    """Straightforward IoU bookkeeping (independent of mmseg): totals over images, nanmean ×100."""
    inter, union, correct, valid_total = np.zeros(num_classes), np.zeros(num_classes), 0, 0
    for pred, gt in zip(preds, gts, strict=True):
        valid = gt != 255
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (gt == c) & valid)
            union[c] += np.sum(((pred == c) | (gt == c)) & valid)
        correct += np.sum((pred == gt) & valid)
        valid_total += valid.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return {"miou": round(float(np.nanmean(iou)) * 100, 2), "aacc": round(correct / valid_total * 100, 2), "iou": iou}


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # PNG bytes even under a .jpg name: exact colours


@dataclass(frozen=True)
class Layout:
    """Where a benchmark's files go and how its label files encode classes."""

    images: str  # path pattern relative to the project root, {id}
    labels: str
    split: str | None  # split-file path, or None (every image in the folder)
    classes: str  # mmseg dataset whose METAINFO lists the label file's classes
    x: str
    y: str
    rest: str
    file_offset: int = 0  # ADE20K files store 1 + class index (0 = "other")


LAYOUTS = {
    "voc": Layout("data/VOCdevkit/VOC2012/JPEGImages/{id}.jpg", "data/VOCdevkit/VOC2012/SegmentationClass/{id}.png",
                  "data/VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt", "PascalVOCDataset", "cat", "dog",
                  "background"),
    "context": Layout("data/VOCdevkit/VOC2010/JPEGImages/{id}.jpg",
                      "data/VOCdevkit/VOC2010/SegmentationClassContext/{id}.png",
                      "data/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{split}.txt", "PascalContextDataset",
                      "cat", "dog", "background"),
    "coco_stuff": Layout("data/coco_stuff164k/images/val2017/{id}.jpg",
                         "data/coco_stuff164k/annotations/val2017/{id}_labelTrainIds.png", None, "COCOStuffDataset",
                         "cat", "dog", "grass"),
    "coco_object": Layout("data/coco_stuff164k/images/val2017/{id}.jpg",
                          "data/coco_object/annotations/val2017/{id}_instanceTrainIds.png", None, "COCOObjectDataset",
                          "cat", "dog", "background"),
    "cityscapes": Layout("data/cityscapes/leftImg8bit/val/ulm/{id}_leftImg8bit.png",
                         "data/cityscapes/gtFine/val/ulm/{id}_gtFine_labelTrainIds.png", None, "CityscapesDataset",
                         "car", "bus", "road"),
    "ade20k": Layout("data/ade/ADEChallengeData2016/images/validation/{id}.jpg",
                     "data/ade/ADEChallengeData2016/annotations/validation/{id}.png", None, "ADE20KDataset",
                     "car", "bus", "wall", file_offset=1),
}


def mmseg_classes(dataset: str) -> tuple[str, ...]:
    from tcl.eval import mmseg_datasets  # (mmcv-lite shim, then the extra dataset classes)

    return tuple(mmseg_datasets.DATASETS.get(dataset).METAINFO["classes"])


def write_layout(root: Path, kind: str, split: str = "val", images: int = 2) -> Layout:
    """Write ``images`` images (the drawing, its mirror, then shifted copies) in ``kind``'s layout."""
    layout = LAYOUTS[kind]
    classes = mmseg_classes(layout.classes)
    code = {name: classes.index(name) + layout.file_offset for name in (layout.x, layout.y, layout.rest)}
    image, labels = drawing_and_truth(code[layout.x], code[layout.y], code[layout.rest])
    ids = []
    for n in range(images):
        ident = f"{kind}_{split}_{n:03d}"
        img, lab = (image, labels) if n % 2 == 0 else (image[:, ::-1], labels[:, ::-1])
        if n >= 2:
            img, lab = np.roll(img, 3 * n, axis=1), np.roll(lab, 3 * n, axis=1)
        _save(np.ascontiguousarray(img), root / layout.images.format(id=ident))
        _save(np.ascontiguousarray(lab), root / layout.labels.format(id=ident))
        ids.append(ident)
    if layout.split:
        path = root / layout.split.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    return layout


class ColourOracle(nn.Module):
    """A predictor with known outputs: class k scores 0.9 where the pixel has class k's colour and
    0.1 elsewhere. It has TCL's inference interface (normalize, build_text_embedding, generate_masks)."""

    def __init__(self, colours: dict[str, tuple[int, int, int]]) -> None:
        super().__init__()
        self.colours = colours
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.window_batches: list[int] = []

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def build_text_embedding(self, names, template: str = "custom") -> torch.Tensor:
        return torch.tensor([[c / 255 for c in self.colours.get(n, (-255, -255, -255))] for n in names])

    def generate_masks(self, image, text_emb, apply_pamr=False, kp_w=0.3) -> torch.Tensor:
        self.window_batches.append(image.shape[0])
        rgb = image * self.pixel_std + self.pixel_mean
        distance = (rgb[:, None] - text_emb[None, :, :, None, None]).abs().amax(dim=2)
        return torch.where(distance < 0.02, 0.9, 0.1)


@pytest.fixture()
def oracle_for():
    def make(layout: Layout) -> ColourOracle:
        return ColourOracle({layout.x: RED, layout.y: BLUE})
    return make
