"""The data sections of ``params.yaml``: ``data`` (the training stream), ``download`` (URL lists → shards)
and the COCO-Object conversions of ``pipeline.coco_object``.

Torch-free (no torch, webdataset or img2dataset import), so :mod:`tcl.config` validates a parameter
file without loading them. Each section checks its own fields in ``__post_init__`` with
:func:`tcl.errors.require`; :func:`tcl.config.from_dict` prefixes the dotted section path.
:class:`DownloadSource` is the one set of download settings: the ``download@<name>`` stage builds it
from the file (or from its command line) and :func:`tcl.data.download.download_shards` takes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import require

__all__ = ["AUGMENTATIONS", "SHUFFLE_MODES", "ShardSource", "StreamConfig", "DISTRIBUTORS", "RESIZE_MODES",
           "ENCODE_FORMATS", "STAGE_NAME", "IMG2DATASET_RESERVED", "DownloadSource", "DownloadConfig",
           "CocoObjectConversion"]

AUGMENTATIONS = ("paper", "crop", "none")
# train.shuffle_captions: the real pairing, or a control (tcl.data.stream.TrainingStream, docs/training.md)
SHUFFLE_MODES = ("none", "any", "disjoint")
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
#: Names that become DVC stage keys (``download@<name>``, ``convert_coco_object@<name>``).
STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: img2dataset arguments that :func:`tcl.data.download.download_shards` sets itself (from DownloadSource's
#: fields or as its output layout needs): not to be passed through ``extra``.
IMG2DATASET_RESERVED = frozenset({
    "url_list", "output_folder", "input_format", "url_col", "caption_col", "output_format", "incremental_mode",
    "oom_shard_count", "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality",
    "number_sample_per_shard", "processes_count", "thread_count", "timeout", "retries", "distributor"})


@dataclass(frozen=True)
class ShardSource:
    """Shards of one data set: brace patterns (``cc-{000000..001175}.tar``), globs or folders."""

    patterns: tuple[str, ...] = ()
    weight: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class StreamConfig:
    """The training stream (``data:``; :class:`tcl.data.stream.TrainingStream`)."""

    sources: tuple[ShardSource, ...] = ()
    batch_size: int = 64  # per rank; every batch is full (partial=False in the official code)
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 2000
    shuffle_initial: int = 100
    image_size: int = 224
    augment: str = "paper"  # "paper" (timm RandAugment, as official build_img_transform), "crop" or "none"
    crop_scale_min: float = 0.08
    context_length: int = 77

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("num_workers", 0), ("shuffle_buffer", 1), ("shuffle_initial", 1),
                          ("image_size", 16)):
            require(getattr(self, name) >= low, name, f"must be >= {low}", getattr(self, name))
        require(self.augment in AUGMENTATIONS, "augment", f"must be one of {', '.join(AUGMENTATIONS)}", self.augment)
        require(0 < self.crop_scale_min <= 1, "crop_scale_min", "must be in (0, 1]", self.crop_scale_min)
        require(self.context_length >= 2, "context_length", "must be >= 2", self.context_length)


@dataclass(frozen=True)
class DownloadSource:
    """One caption/URL list turned into one folder of webdataset shards (DVC stage ``download@<name>``).

    ``root`` is the folder holding the list (the stage's DVC dependency, so that a changed list *or*
    changed local images re-run it; served on 127.0.0.1 when ``serve``), ``list`` the TSV/parquet file
    inside it (a path that is absolute stays as it is: :attr:`url_list`), ``out`` the shard folder (kept
    between runs so an interrupted download resumes). The rest are img2dataset settings
    (:func:`tcl.data.download.download_shards`; ``processes`` 0: one per CPU core; ``sort_samples``:
    shards whose sample order, and so the training batches, do not depend on download timing);
    ``extra`` passes further img2dataset arguments through (e.g. ``{min_image_size: 64}``).
    """

    root: str = ""
    list: str = ""
    out: str = ""
    prefix: str = ""
    serve: bool = False
    image_size: int = 512
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 95
    samples_per_shard: int = 10000
    processes: int = 0  # 0: one per CPU core
    threads: int = 64
    timeout: float = 10.0
    retries: int = 0
    distributor: str = "multiprocessing"
    sort_samples: bool = False  # rewrite finished shards in key order: the same shards on every run
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("root", "list", "out"):
            require(bool(getattr(self, name)), name, "must be set")
        require(os.sep not in self.prefix and "/" not in self.prefix and not self.prefix.startswith("."), "prefix",
                "must be a plain file-name start (no '/', not hidden)", self.prefix)
        require(self.resize_mode in RESIZE_MODES, "resize_mode", f"must be one of {', '.join(RESIZE_MODES)}",
                self.resize_mode)
        require(self.encode_format in ENCODE_FORMATS, "encode_format", f"must be one of {', '.join(ENCODE_FORMATS)}",
                self.encode_format)
        require(self.distributor in DISTRIBUTORS, "distributor", f"must be one of {', '.join(DISTRIBUTORS)}",
                self.distributor)
        require(self.image_size >= 16, "image_size", "must be >= 16", self.image_size)
        require(0 <= self.encode_quality <= 100, "encode_quality", "must be in [0, 100]", self.encode_quality)
        if self.encode_format == "png":  # img2dataset reads it as the PNG compression level
            require(self.encode_quality <= 9, "encode_quality", "must be in [0, 9] for png (the compression level)",
                    self.encode_quality)
        require(self.samples_per_shard >= 1, "samples_per_shard", "must be >= 1", self.samples_per_shard)
        require(self.processes >= 0, "processes", "must be >= 0 (0: one per core)", self.processes)
        require(self.threads >= 1, "threads", "must be >= 1", self.threads)
        require(self.timeout > 0, "timeout", "must be > 0", self.timeout)
        require(self.retries >= 0, "retries", "must be >= 0", self.retries)
        own = {f.name for f in fields(self)}
        for key in self.extra:
            require(key not in own and key not in IMG2DATASET_RESERVED, f"extra.{key}",
                    "set by this section or the stage, not through extra")

    @property
    def url_list(self) -> Path:
        """The list's path: ``list`` inside ``root``."""
        return Path(self.root) / self.list

    @property
    def serve_root(self) -> Path | None:
        """The folder served on 127.0.0.1 for the list's relative paths, or None."""
        return Path(self.root) if self.serve else None

    @property
    def processes_count(self) -> int:
        """img2dataset's processes: ``processes``, or one per CPU core for 0."""
        return self.processes or os.cpu_count() or 1


def _builtin_sources() -> dict[str, DownloadSource]:
    # The built-in synthetic corpus (params.yaml sets its sizes): a config built in code is complete without a file.
    return {"synthetic": DownloadSource(root="data/synthetic/corpus", list="pairs.tsv", out="data/synthetic/shards",
                                        prefix="synthetic-", serve=True)}


@dataclass(frozen=True)
class DownloadConfig:
    """``download.sources``: name → :class:`DownloadSource`; each name becomes stage ``download@<name>``."""

    sources: dict[str, DownloadSource] = field(default_factory=_builtin_sources)

    def __post_init__(self) -> None:
        require(bool(self.sources), "sources", "at least one source is needed (the training stages depend on them)")
        for name in self.sources:
            require(bool(STAGE_NAME.match(name)), f"sources.{name}",
                    "names may hold only letters, digits, '_' and '-' (they become DVC stage names)")
        outs = [s.out.rstrip("/") for s in self.sources.values()]
        require(len(set(outs)) == len(outs), "sources", "two sources write the same out folder")


@dataclass(frozen=True)
class CocoObjectConversion:
    """COCO-Stuff-164k raw maps under ``root`` → COCO-Object maps under ``out`` (as the official
    convert_dataset/convert_coco_object.py); ``out`` is the ``evaluate.data_roots`` entry of the
    coco_object benchmark that reads them."""

    root: str = ""
    out: str = ""

    def __post_init__(self) -> None:
        for name in ("root", "out"):
            require(bool(getattr(self, name)), name, "must be set")
