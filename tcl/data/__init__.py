"""Data preparation: dataset conversions, training shards and the built-in synthetic world."""

from .coco_object import COCO_OBJECT_LUT, convert_coco_object, convert_label_map

__all__ = ["COCO_OBJECT_LUT", "convert_coco_object", "convert_label_map"]
