"""Data preparation and loading: URL lists → shards, the training stream, benchmark conversions, and
the built-in synthetic world."""

from .._exports import lazy_exports

_WHERE = {
    "COCO_OBJECT_LUT": "coco_object",
    "convert_coco_object": "coco_object",
    "convert_label_map": "coco_object",
    "DownloadError": "url_lists",
    "download_shards": "download",
    "read_url_list": "url_lists",
    "serve_directory": "url_lists",
    "ShardSource": "config",
    "StreamConfig": "config",
    "DownloadSource": "config",
    "DownloadConfig": "config",
    "CocoObjectConversion": "config",
    "StreamState": "stream",
    "TrainingStream": "stream",
    "build_loader": "stream",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
