"""Evaluate a model on a registered benchmark with the paper's protocol (docs/evaluation.md), fast.

Per benchmark: mmseg's dataset and test pipeline (:mod:`.datasets`), class-name text embeddings
computed once and cached on disk (:mod:`.text_cache`), images decoded, resized and turned into
(pinned, on a GPU) tensors by data-loader workers, the sliding windows of several images batched
through the model (:mod:`tcl.inference.sliding`) with the inference settings of
:meth:`EvalConfig.settings`, a constant background channel where the dataset has background, the
bilinear resize to the original size and arg-max (:mod:`tcl.inference.scores`),
and mmseg's ``IoUMetric`` (:mod:`.metric`). Under ``torch.distributed`` every rank takes every
world-size-th image and the area totals are all-reduced, so all ranks return the dataset's numbers.

Every result records its throughput (``images_per_s``, ``windows_per_s``: the scoring loop, the
text embeddings left out), the precision the windows ran in (``auto`` resolved) and the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..inference.scores import labels_at_thresholds
from ..inference.sliding import sliding_window_scores_many, window_boxes
from ..runtime import get_rank, get_world_size, is_distributed, resolve_precision
from ..visualize import save_atomic
from .benchmarks import Benchmark, get_benchmark
from .config import EvalConfig, Protocol
from .datasets import EvalDataError, EvalSamples, build_dataset, class_names
from .metric import AreaTotals
from .overlays import comparison_panel
from .text_cache import text_embedding

__all__ = ["evaluate_benchmark", "sweep_bg_thresh"]


def _device_of(model) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()))
    return tensor.device


def _to_input(model, rgb: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """HWC uint8 RGB (from :func:`_collate`) → ImageNet-normalised RGB [1, 3, H, W] on ``device``."""
    rgb = torch.as_tensor(rgb).to(device, non_blocking=True)  # pinned on a GPU: the copy overlaps queued work
    return model.normalize(rgb.permute(2, 0, 1)[None].float() / 255.0)


def _collate(items: list[dict], tensors: bool = False) -> list[dict]:
    """In the worker: the BGR → RGB flip (``rgb`` in place of ``image``) and the int64 ground truth
    (``gt_tensor``; the ``gt`` array stays for the overlays), so that the main process only launches
    work. ``tensors``: as torch tensors, which the loader can pin for asynchronous copies to a GPU;
    else as arrays (a tensor crosses from a worker through shared memory, slower than a pickled array
    for small images, and on the CPU there is nothing to pin)."""
    for item in items:
        if "error" not in item:
            rgb, gt = np.ascontiguousarray(item.pop("image")[..., ::-1]), item["gt"].astype(np.int64)
            item["rgb"], item["gt_tensor"] = (torch.from_numpy(rgb), torch.from_numpy(gt)) if tensors else (rgb, gt)
    return items


def _all_reduce(value: float, op, device: torch.device) -> float:
    packed = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        packed = packed.to(device)
    dist.all_reduce(packed, op=op)
    return float(packed.item())


def _run(model, bench: Benchmark, config: EvalConfig, thresholds: list[float | None], *, root, limit,
         overlay_dir, progress) -> tuple[list[AreaTotals], dict]:
    """Score the benchmark once and accumulate IoU totals for each background threshold."""
    protocol: Protocol = getattr(config.protocols, bench.protocol)  # the data loader's resize
    settings = config.settings(bench.protocol)
    dataset = build_dataset(bench, config.data_roots, protocol, root)
    classes = list(dataset.metainfo["classes"])
    names = class_names(dataset, bench.with_background)
    device = _device_of(model)
    cache = None if config.text_cache is None else Path(root) / config.text_cache
    text_emb, text_record = text_embedding(model, names, settings.template, cache, device)  # once per benchmark
    if text_record["file"] is not None and Path(text_record["file"]).is_relative_to(root):
        # as the parameters name it: results are committed, the project's absolute path is nobody's business
        text_record["file"] = str(Path(text_record["file"]).relative_to(root))
    precision = resolve_precision(config.precision, device, inference=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = get_rank(), get_world_size()
    samples = EvalSamples(dataset, list(range(rank, count, world)))
    # One pass over the data: persistent workers would only outlive it. Pinned batches let the
    # host-to-GPU copies run asynchronously; the default prefetch (2 batches a worker) keeps a batch
    # decoded ahead of the one being scored.
    on_gpu = device.type == "cuda"
    loader = DataLoader(samples, batch_size=config.image_batch, num_workers=config.num_workers,
                        collate_fn=partial(_collate, tensors=on_gpu), persistent_workers=False, pin_memory=on_gpu)
    totals = [AreaTotals(classes) for _ in thresholds]
    overlays, done, windows = [], 0, 0
    start = time.perf_counter()
    for batch in loader:
        for item in batch:
            if "error" in item:
                raise EvalDataError(f"benchmark {bench.name!r}: {item['error']}")
        images = [_to_input(model, item["rgb"], device) for item in batch]
        windows += sum(len(window_boxes(*image.shape[-2:], settings.crop, settings.stride)) for image in images)
        scores = sliding_window_scores_many(
            model, images, text_emb, crop=settings.crop, stride=settings.stride, apply_pamr=settings.pamr,
            kp_w=settings.kp_w, bg_thresh=None, window_batch=config.window_batch,
            precision=precision)
        for item, score in zip(batch, scores, strict=True):
            gt = torch.as_tensor(item["gt_tensor"]).to(device, non_blocking=True)
            for total, pred in zip(totals, labels_at_thresholds(score, tuple(gt.shape), thresholds), strict=True):
                total.add(pred, gt)
            if overlay_dir is not None and rank == 0 and len(overlays) < config.overlays:
                with Image.open(item["img_path"]) as original:
                    panel = comparison_panel(original, item["gt"], pred.cpu().numpy(), classes, bench.with_background)
                path = Path(overlay_dir) / f"{bench.name}_{Path(item['img_path']).stem}.png"
                save_atomic(panel, path)
                overlays.append(str(path))
        done += len(batch)
        if progress is not None and rank == 0:
            progress(done, len(samples))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the time of the work, not of its queueing
    seconds = time.perf_counter() - start
    for total in totals:
        total.all_reduce()
    if is_distributed():
        seconds = _all_reduce(seconds, dist.ReduceOp.MAX, device)  # the slowest rank's: the benchmark's time
        windows = int(_all_reduce(float(windows), dist.ReduceOp.SUM, device))
    info = {"settings": settings, "dataset": dataset, "names": names, "seconds": seconds, "windows": windows,
            "overlays": overlays, "device": device, "precision": precision, "text_embedding": text_record}
    return totals, info


def _throughput(images: int, info: dict) -> dict:
    """The scoring loop's images/s and windows/s, the precision it ran in and the device."""
    seconds = max(info["seconds"], 1e-9)
    return {"num_images": images, "num_windows": info["windows"], "seconds": round(info["seconds"], 3),
            "images_per_s": round(images / seconds, 4), "windows_per_s": round(info["windows"] / seconds, 4),
            "precision": info["precision"], "device": str(info["device"]), "text_embedding": info["text_embedding"]}


def _settings_record(bench: Benchmark, config: EvalConfig, info: dict, bg_thresh: float | None) -> dict:
    settings = info["settings"]
    return {
        "setting": config.setting, "pamr": settings.pamr, "bg_thresh": bg_thresh, "kp_w": settings.kp_w,
        "template": settings.template, "short_side": settings.short_side, "long_side": settings.long_side,
        "crop": settings.crop, "stride": settings.stride, "with_background": bench.with_background,
        "reduce_zero_label": bool(info["dataset"].reduce_zero_label), "precision": info["precision"],
        "precision_requested": config.precision,
        "window_batch": config.window_batch, "image_batch": config.image_batch, "num_workers": config.num_workers,
        "world_size": get_world_size(), "device": str(info["device"]), "dataset": bench.dataset,
        "data_root": getattr(config.data_roots, bench.root), "split": bench.split or None,
    }


def _with_mode(model, fn):
    was_training = model.training
    model.eval()
    try:
        return fn()
    finally:
        model.train(was_training)


def evaluate_benchmark(model, name: str, config: EvalConfig, *, root: str | Path = ".", limit: int | None = None,
                       overlay_dir: str | Path | None = None, print_table: bool = True,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Evaluate ``model`` on benchmark ``name`` (see :data:`tcl.eval.BENCHMARKS`) with ``config``.

    ``root`` is the project root the data roots are relative to; ``limit`` evaluates only the first
    images (quick checks); ``overlay_dir`` receives ``config.overlays`` qualitative PNG panels;
    ``print_table`` prints mmseg's per-class table (rank 0). Returns ``benchmark, miou, aacc, macc,
    per_class_iou, per_class_acc, num_images, num_windows, seconds, images_per_s, windows_per_s, precision
    (the one the windows ran in), device, text_embedding (the cache's record), settings, overlays``.
    """
    bench = get_benchmark(name)
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper: evaluate the model inside
    bg_thresh = config.settings(bench.protocol).bg_thresh if bench.with_background else None
    totals, info = _with_mode(model, lambda: _run(model, bench, config, [bg_thresh], root=root, limit=limit,
                                                  overlay_dir=overlay_dir, progress=progress))
    total = totals[0]
    if print_table and get_rank() == 0:
        total.print_table(bench.name)
    return {"benchmark": bench.name, **total.summary(), **_throughput(total.images, info),
            "settings": _settings_record(bench, config, info, bg_thresh), "overlays": info["overlays"]}


def sweep_bg_thresh(model, name: str, config: EvalConfig, candidates: list[float] | None = None, *,
                    root: str | Path = ".", limit: int | None = None) -> dict:
    """mIoU of a background benchmark for each candidate ``bg_thresh``, scoring every image once.

    Meant for a *training* split (``t_synthetic_voc``): thresholds are chosen there, never on the
    reported validation sets. Returns ``{"benchmark", "candidates": {thresh: miou}, "best", "best_miou"}``
    (the lowest threshold among equals wins).
    """
    bench = get_benchmark(name)
    if not bench.with_background:
        raise ConfigError(f"benchmark {name!r} has no background class: bg_thresh does not apply")
    model = getattr(model, "module", model)
    candidates = sorted(set(candidates if candidates is not None else config.bg_thresh_candidates))
    totals, info = _with_mode(model, lambda: _run(model, bench, config, candidates, root=root, limit=limit,
                                                  overlay_dir=None, progress=None))
    mious = {thresh: total.summary()["miou"] for thresh, total in zip(candidates, totals, strict=True)}
    best = max(candidates, key=lambda t: (mious[t] if mious[t] is not None else -1.0, -t))
    return {"benchmark": bench.name, "candidates": mious, "best": best, "best_miou": mious[best],
            **_throughput(totals[0].images, info), "settings": _settings_record(bench, config, info, None)}
