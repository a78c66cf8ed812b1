"""What the whole pipeline needs from outside: checked before ``dvc repro`` starts (``make run``).

The paper setting reads URL lists, benchmark folders and CLIP weights that no stage makes; on a
machine without them the pipeline used to run for minutes before its first stage failed.
:func:`missing_inputs` names each missing one in one line, with where to get it; inputs that a
stage of ``dvc.yaml`` produces (the synthetic world, shards, COCO-Object maps) are not required.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePosixPath

import yaml

from tcl.config import ConfigError, Params
from tcl.preflight import PAPER_SETTING_DOCS, check_clip_weights, check_shard_source

__all__ = ["missing_inputs", "produced_paths"]

_SPECIAL = "{*?["


def produced_paths(params: Params, root: str | os.PathLike) -> list[PurePosixPath]:
    """Folders and files that stages of ``root/dvc.yaml`` write (relative to ``root``)."""
    found = [s.out for s in params.download.sources.values()] + [c.out for c in params.pipeline.coco_object.values()]
    dvc_yaml = Path(root) / "dvc.yaml"
    stages = {}
    if dvc_yaml.is_file():
        try:
            stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
        except yaml.YAMLError:
            stages = {}  # DVC reports a broken dvc.yaml itself
    for stage in stages.values():
        if not isinstance(stage, dict) or "foreach" in stage:  # templated: their outs come from params (above)
            continue
        for out in stage.get("outs") or []:
            name = out if isinstance(out, str) else next(iter(out), "") if isinstance(out, dict) else ""
            if name and "${" not in name:
                found.append(name)
    return [_relative(p, root) for p in found if p]


def _relative(path: str, root: str | os.PathLike) -> PurePosixPath:
    path = Path(path)
    if path.is_absolute():
        with contextlib.suppress(ValueError):  # outside the project: compared as it is
            path = path.relative_to(Path(root).resolve())
    return PurePosixPath(os.path.normpath(path.as_posix()))


def _is_produced(path: str, produced: list[PurePosixPath], root: str | os.PathLike) -> bool:
    # A pattern counts by its literal part: data/gcc3m/gcc-train-{000000..000347}.tar lies in data/gcc3m.
    literal = path
    if any(ch in path for ch in _SPECIAL):
        literal = str(PurePosixPath(path[:min(path.index(ch) for ch in _SPECIAL if ch in path)]).parent)
    target = _relative(literal, root)
    return any(target == out or out in target.parents for out in produced)


def missing_inputs(params: Params, root: str | os.PathLike, timeout: float = 3.0) -> list[str]:
    """One line per input of the pipeline that is neither on disk under ``root`` nor made by a stage."""
    from tcl.eval import get_benchmark
    from tcl.eval.datasets import benchmark_paths

    root = Path(root)
    produced = produced_paths(params, root)
    problems: list[str] = []
    for name, source in params.download.sources.items():
        if _is_produced(source.root, produced, root):
            continue
        listed = root / source.root / source.list
        if not listed.is_file():
            problems.append(f"download.sources.{name}: {source.root}/{source.list} not found: put the {name} "
                            f"caption/URL list there ({PAPER_SETTING_DOCS})")
    for i, source in enumerate(params.data.sources):
        if all(_is_produced(p, produced, root) for p in source.patterns):
            continue
        try:
            check_shard_source(source.patterns, f"data.sources[{i}].patterns", source.name, root)
        except ConfigError as err:
            problems.append(str(err))
    for name, conversion in params.pipeline.coco_object.items():
        if not _is_produced(conversion.root, produced, root) and not (root / conversion.root).is_dir():
            problems.append(f"pipeline.coco_object.{name}.root: {conversion.root} not found: prepare COCO-Stuff-164k "
                            f"there ({PAPER_SETTING_DOCS})")

    # Benchmarks by data root: voc, voc20 and t_voc20 read one folder, which is reported once.
    evaluate = params.evaluate
    needed = [*evaluate.benchmarks, *params.train.val_benchmarks]
    if evaluate.bg_thresh is None:  # a fixed threshold is passed through without reading the split
        needed.append(evaluate.bg_thresh_split)
    missing_roots: dict[str, dict] = {}
    for name in dict.fromkeys(needed):
        bench = get_benchmark(name)
        paths = benchmark_paths(bench, evaluate.data_roots, root)
        for kind in ("images", "annotations", "split"):
            path = paths[kind]
            root_key = bench.image_root if kind == "images" and bench.image_root else bench.root
            folder = getattr(evaluate.data_roots, root_key)
            if path is None or _is_produced(folder, produced, root):
                continue
            if not (path.is_file() if kind == "split" else path.is_dir()):
                entry = missing_roots.setdefault(root_key, {"path": path, "folder": folder, "benchmarks": [],
                                                            "url": bench.prepare_url})
                if name not in entry["benchmarks"]:
                    entry["benchmarks"].append(name)
    for root_key, entry in missing_roots.items():
        try:
            shown = entry["path"].relative_to(root.resolve())
        except ValueError:
            shown = entry["path"]
        users = ", ".join(entry["benchmarks"])
        problems.append(f"evaluate.data_roots.{root_key}: {shown} not found (needed by {users}): prepare "
                        f"{entry['folder']} as in {entry['url']} ({PAPER_SETTING_DOCS})")
    try:
        check_clip_weights(params.clip.model, params.clip.weights, root, timeout)
    except ConfigError as err:
        problems.append(str(err))
    return problems
