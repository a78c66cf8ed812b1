"""The benchmark registry: every zero-shot benchmark defined once
(official: kakaobrain/tcl bc2b551 configs/eval.yml and segmentation/configs/_base_/datasets/*.py).

Each entry names an mmsegmentation 1.x dataset class (the built-in ones, plus ``PascalVOC20Dataset``
and ``COCOObjectDataset`` registered by :mod:`tcl.eval.datasets`), which ``evaluate.data_roots``
key holds its files, the folders and split inside that root, whether a constant background channel
is predicted (``with_background``: exactly the datasets whose first class is "background") and which
``evaluate.protocols`` geometry it uses. Importing this module does not import mmseg.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TCLError

__all__ = ["Benchmark", "BENCHMARKS", "get_benchmark", "UnknownBenchmarkError", "PREPARE_URL"]

PREPARE_URL = "https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html"


class UnknownBenchmarkError(TCLError, KeyError):
    """A benchmark name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


@dataclass(frozen=True)
class Benchmark:
    name: str
    dataset: str  # mmseg dataset class name
    root: str  # evaluate.data_roots field holding the annotations (and the images unless image_root is set)
    img_dir: str
    ann_dir: str
    split: str = ""  # split file relative to the root; empty: every image in img_dir
    with_background: bool = False
    protocol: str = "paper"  # evaluate.protocols field
    image_root: str | None = None  # evaluate.data_roots field holding the images, when not ``root``
    prepare: str = ""  # anchor in mmseg's dataset preparation guide
    layout: str = ""  # expected files, for the missing-data message
    training_split: bool = False  # a train split (model selection, thresholds), never a reported number
    classes: tuple[str, ...] | None = None  # the vocabulary when not all of the dataset class's classes

    @property
    def prepare_url(self) -> str:
        return f"{PREPARE_URL}#{self.prepare}" if self.prepare else PREPARE_URL


_VOC = dict(dataset="PascalVOCDataset", root="voc", img_dir="JPEGImages", ann_dir="SegmentationClass",
            split="ImageSets/Segmentation/val.txt", prepare="pascal-voc",
            layout="VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}")
_CONTEXT = dict(dataset="PascalContextDataset", root="context", img_dir="JPEGImages",
                ann_dir="SegmentationClassContext", split="ImageSets/SegmentationContext/val.txt",
                prepare="pascal-context",
                layout="VOC2010/{JPEGImages/*.jpg, SegmentationClassContext/*.png (converted with mmseg's "
                       "tools/dataset_converters/pascal_context.py), ImageSets/SegmentationContext/{train,val}.txt}")
_COCO = dict(dataset="COCOStuffDataset", root="coco_stuff", img_dir="images/val2017", ann_dir="annotations/val2017",
             prepare="coco-stuff-164k",
             layout="coco_stuff164k/{images/val2017/*.jpg, annotations/val2017/*_labelTrainIds.png (mmseg's "
                    "tools/dataset_converters/coco_stuff164k.py)}")
_COCO_OBJECT = dict(dataset="COCOObjectDataset", root="coco_object", image_root="coco_stuff",
                    img_dir="images/val2017", ann_dir="annotations/val2017", with_background=True,
                    prepare="coco-stuff-164k",
                    layout="images in <coco_stuff>/images/val2017/*.jpg and labels in "
                           "<coco_object>/annotations/val2017/*_instanceTrainIds.png (stages/convert_coco_object.py "
                           "--root <coco_stuff> --out <coco_object>)")


def _synthetic_vocabularies() -> dict[str, tuple[str, ...]]:
    """The classes the synthetic world draws, by mmseg name: its benchmarks' vocabularies.

    A real benchmark prompts with the classes its images contain; the synthetic twins do the same
    (8 object kinds, plus 6 stuff kinds on COCO-Stuff) instead of also prompting with the 12 VOC or
    157 COCO-Stuff names that never occur in their images nor in the corpus the tiny CLIP learnt from.
    """
    from tcl.data.synthetic.vocabulary import OBJECT_KINDS, STUFF_KINDS

    voc = tuple(kind.voc_name for kind in OBJECT_KINDS)
    coco = tuple(kind.coco_name for kind in OBJECT_KINDS)
    return {"voc": ("background", *voc), "voc20": voc, "coco_object": ("background", *coco),
            "coco_stuff": (*coco, *(stuff.coco_stuff_name for stuff in STUFF_KINDS))}


def _entries() -> list[Benchmark]:
    vocab = _synthetic_vocabularies()

    def synthetic(entry: dict, root: str, **changes) -> dict:
        return {**entry, "root": root, "protocol": "synthetic", "prepare": "",
                "layout": f"{entry['layout']} (python stages/synthetic.py --out data/synthetic)", **changes}

    return [
        Benchmark("voc", **_VOC, with_background=True),
        Benchmark("voc20", **{**_VOC, "dataset": "PascalVOC20Dataset"}),
        Benchmark("context", **_CONTEXT, with_background=True),
        Benchmark("context59", **{**_CONTEXT, "dataset": "PascalContextDataset59"}),
        Benchmark("coco_stuff", **_COCO),
        Benchmark("coco_object", **_COCO_OBJECT),
        Benchmark("cityscapes", dataset="CityscapesDataset", root="cityscapes", img_dir="leftImg8bit/val",
                  ann_dir="gtFine/val", prepare="cityscapes",
                  layout="cityscapes/{leftImg8bit/val/<city>/*_leftImg8bit.png, gtFine/val/<city>/"
                         "*_gtFine_labelTrainIds.png (mmseg's tools/dataset_converters/cityscapes.py)}"),
        Benchmark("ade20k", dataset="ADE20KDataset", root="ade20k", img_dir="images/validation",
                  ann_dir="annotations/validation", prepare="ade20k",
                  layout="ADEChallengeData2016/{images/validation/*.jpg, annotations/validation/*.png}"),
        Benchmark("t_voc20", **{**_VOC, "dataset": "PascalVOC20Dataset",
                                "split": "ImageSets/Segmentation/train.txt"}, training_split=True),
        Benchmark("t_context59", **{**_CONTEXT, "dataset": "PascalContextDataset59",
                                    "split": "ImageSets/SegmentationContext/train.txt"}, training_split=True),
        Benchmark("synthetic_voc", **synthetic(_VOC, "synthetic_voc"), with_background=True, classes=vocab["voc"]),
        Benchmark("synthetic_voc20", **synthetic(_VOC, "synthetic_voc", dataset="PascalVOC20Dataset"),
                  classes=vocab["voc20"]),
        Benchmark("synthetic_coco_stuff", **synthetic(_COCO, "synthetic_coco_stuff"), classes=vocab["coco_stuff"]),
        Benchmark("synthetic_coco_object", **synthetic(_COCO_OBJECT, "synthetic_coco_object",
                                                       image_root="synthetic_coco_stuff"),
                  classes=vocab["coco_object"]),
        Benchmark("t_synthetic_voc", **synthetic(_VOC, "synthetic_voc", split="ImageSets/Segmentation/train.txt"),
                  with_background=True, training_split=True, classes=vocab["voc"]),
    ]


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _entries()}


def get_benchmark(name: str) -> Benchmark:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})") from None
