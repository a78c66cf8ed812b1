"""Data preparation and loading: URL lists → shards, the training stream, benchmark conversions, and
the built-in synthetic world."""

from .coco_object import COCO_OBJECT_LUT, convert_coco_object, convert_label_map
from .download import download_shards
from .stream import ShardSource, StreamConfig, StreamState, TrainingStream, build_loader
from .url_lists import DownloadError, read_url_list, serve_directory

__all__ = [
    "COCO_OBJECT_LUT", "convert_coco_object", "convert_label_map",
    "DownloadError", "download_shards", "read_url_list", "serve_directory",
    "ShardSource", "StreamConfig", "StreamState", "TrainingStream", "build_loader",
]
