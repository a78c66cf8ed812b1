"""The pipeline's own sections of ``params.yaml``: ``download`` (one DVC stage per source) and ``pipeline``.

Validated by :mod:`tcl.config` like every other section; the ``validate`` methods below check what a
single dotted key cannot (required fields, names DVC accepts as stage keys, values that depend on
each other) and raise ``ValueError("<field>: <why>")``, which the loader prefixes with the section path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from ..data.download import DISTRIBUTORS, ENCODE_FORMATS, RESIZE_MODES
from ..eval.config import BASELINES

__all__ = ["DownloadSource", "DownloadConfig", "CocoObjectConversion", "PipelineConfig"]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class DownloadSource:
    """One caption/URL list turned into one folder of webdataset shards (DVC stage ``download@<name>``).

    ``root`` is the folder holding the list (the stage's DVC dependency, so that a changed list *or*
    changed local images re-run it; served on 127.0.0.1 when ``serve``), ``list`` the TSV/parquet file
    inside it, ``out`` the shard folder (kept between runs so an interrupted download resumes). The
    rest are :func:`tcl.data.download.download_shards` settings (``sort_samples``: shards whose
    sample order, and so the training batches, do not depend on download timing); ``extra`` passes further
    img2dataset arguments through (e.g. ``{min_image_size: 64}``).
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

    def validate(self) -> DownloadSource:
        for name in ("root", "list", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must be set")
        checks = [
            ("resize_mode", self.resize_mode in RESIZE_MODES, f"must be one of {', '.join(RESIZE_MODES)}"),
            ("encode_format", self.encode_format in ENCODE_FORMATS, f"must be one of {', '.join(ENCODE_FORMATS)}"),
            ("distributor", self.distributor in DISTRIBUTORS, f"must be one of {', '.join(DISTRIBUTORS)}"),
            ("image_size", self.image_size >= 16, "must be >= 16"),
            ("encode_quality", 0 <= self.encode_quality <= 100, "must be in [0, 100]"),
            ("samples_per_shard", self.samples_per_shard >= 1, "must be >= 1"),
            ("processes", self.processes >= 0, "must be >= 0 (0: one per core)"),
            ("threads", self.threads >= 1, "must be >= 1"),
            ("timeout", self.timeout > 0, "must be > 0"),
            ("retries", self.retries >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name}: {why}, got {getattr(self, name)!r}")
        own = {f.name for f in fields(self)}
        for key in self.extra:
            if key in own or key in ("url_list", "output_folder", "number_sample_per_shard", "processes_count",
                                     "thread_count"):
                raise ValueError(f"extra.{key}: set by this section or the stage, not through extra")
        return self


@dataclass(frozen=True)
class DownloadConfig:
    """``download.sources``: name → :class:`DownloadSource`; each name becomes stage ``download@<name>``."""

    sources: dict[str, DownloadSource] = field(default_factory=dict)

    def validate(self) -> DownloadConfig:
        if not self.sources:
            raise ValueError("sources: at least one source is needed (the training stages depend on them)")
        for name in self.sources:
            if not _NAME.match(name):
                raise ValueError(f"sources.{name}: names may hold only letters, digits, '_' and '-' "
                                 "(they become DVC stage names)")
        outs = [s.out.rstrip("/") for s in self.sources.values()]
        if len(set(outs)) != len(outs):
            raise ValueError("sources: two sources write the same out folder")
        return self


@dataclass(frozen=True)
class CocoObjectConversion:
    """COCO-Stuff-164k raw maps under ``root`` → COCO-Object maps under ``out`` (as the official
    convert_dataset/convert_coco_object.py); ``out`` is the ``evaluate.data_roots`` entry of the
    coco_object benchmark that reads them."""

    root: str = ""
    out: str = ""

    def validate(self) -> CocoObjectConversion:
        for name in ("root", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must be set")
        return self


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages are chained and recorded (``dvc.yaml``, ``pipelines/``, MLflow)."""

    experiment: str = "tcl"  # MLflow experiment of the pipeline's parent run (stage runs nest under it)
    nproc_per_node: int = 1  # torchrun processes of the train stage (one per GPU; 1 on a CPU)
    baselines: tuple[str, ...] = BASELINES  # stage baseline@<benchmark>-<baseline> each
    coco_object: dict[str, CocoObjectConversion] = field(default_factory=dict)  # convert_coco_object@<name>
    register_name: str = "tcl"  # MLflow registered model that the final checkpoint becomes a version of
    register_alias: str = "champion"  # alias moved to the newest registered version

    def validate(self) -> PipelineConfig:
        if not self.experiment:
            raise ValueError("experiment: must be set")
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node: must be >= 1, got {self.nproc_per_node}")
        if (not self.baselines or any(b not in BASELINES for b in self.baselines)
                or len(set(self.baselines)) != len(self.baselines)):
            raise ValueError(f"baselines: one or both of {', '.join(BASELINES)} (the report compares the trained "
                             f"model with them), each once, got {list(self.baselines)}")
        for name in self.coco_object:
            if not _NAME.match(name):
                raise ValueError(f"coco_object.{name}: names may hold only letters, digits, '_' and '-'")
        if not _NAME.match(self.register_name):
            raise ValueError(f"register_name: letters, digits, '_' and '-' only, got {self.register_name!r}")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", self.register_alias) or self.register_alias.lower() == "latest":
            raise ValueError(f"register_alias: a name like 'champion' (not 'latest'), got {self.register_alias!r}")
        return self
