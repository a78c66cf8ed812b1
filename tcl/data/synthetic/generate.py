"""Writing the synthetic world to disk: parameters, output layout, rendering workers, lists and manifest.

:func:`generate_synthetic` renders the corpus and the VOC and COCO-Stuff look-alikes in chunks (in
worker processes if asked, byte-identical either way), writes the lists and the manifest into a
hidden temporary folder and swaps it into place atomically, skipping a rerun over a complete output
with the same :class:`SyntheticParams`; :func:`measure_throughput` times corpus generation alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .benchmarks import BenchmarkIds, _voc_palette, benchmark_ids, coco_stuff_label_maps, voc_label_map
from .config import SyntheticParams  # re-exported: the synthetic section lives there
from .errors import SyntheticError
from .render import render_scene
from .vocabulary import OBJECT_KINDS, STUFF_KINDS

__all__ = [
    "GENERATOR_VERSION", "SyntheticParams", "generate_synthetic", "measure_throughput",
    "CORPUS_DIR", "PAIRS_FILE", "MANIFEST_FILE", "VOC_DIR", "COCO_STUFF_DIR", "STREAMS",
]

# Bump whenever the drawing, captions or layout change: a rerun then regenerates instead of no-op.
GENERATOR_VERSION = 1

CORPUS_DIR = "corpus"
PAIRS_FILE = "pairs.tsv"
MANIFEST_FILE = "manifest.json"
VOC_DIR = "VOCdevkit/VOC2012"
COCO_STUFF_DIR = "coco_stuff164k"
# One random stream per product: the held-out sets never reuse a corpus scene.
STREAMS = {"corpus": 0, "voc/train": 1, "voc/val": 2, "coco_stuff/train": 3, "coco_stuff/val": 4}
_SHARD_SIZE = 1000
_COCO_VAL_ID_OFFSET = 1_000_000  # keeps image ids unique across train2017 and val2017, like real COCO


def _corpus_relpath(index: int) -> str:
    return f"images/{index // _SHARD_SIZE:05d}/{index:08d}.jpg"


def _eval_name(product: str, split: str, index: int) -> str:
    if product == "voc":
        return f"synth_{split}_{index:06d}"
    return f"{index + (_COCO_VAL_ID_OFFSET if split == 'val' else 0):012d}"


def _save_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    # 4:4:4 chroma: at 96 px the default 4:2:0 subsampling would smear the colours that identify kinds.
    Image.fromarray(image).save(path, format="JPEG", quality=quality, subsampling=0)


def _render_chunk(task: tuple) -> list[str]:
    """Worker: render and write images [start, stop) of one product; returns corpus captions."""
    product, split, start, stop, root, params_dict, ids = task
    params = SyntheticParams(**params_dict)
    root = Path(root)
    captions = []
    if product == "corpus":
        for index in range(start, stop):
            scene = render_scene(params.seed, STREAMS["corpus"], index, params.image_size, params.max_objects,
                                 params.min_object_frac)
            _save_jpeg(scene.image, root / CORPUS_DIR / _corpus_relpath(index), params.jpeg_quality)
            captions.append(scene.caption)
        return captions
    stream = STREAMS[f"{product}/{split}"]
    for index in range(start, stop):
        scene = render_scene(params.seed, stream, index, params.eval_image_size, params.max_objects,
                             params.min_object_frac)
        name = _eval_name(product, split, index)
        if product == "voc":
            base = root / VOC_DIR
            _save_jpeg(scene.image, base / "JPEGImages" / f"{name}.jpg", params.jpeg_quality)
            labels = Image.fromarray(voc_label_map(scene, ids), mode="P")
            labels.putpalette(_voc_palette())
            labels.save(base / "SegmentationClass" / f"{name}.png", format="PNG")
        else:
            base = root / COCO_STUFF_DIR
            split_dir = f"{split}2017"
            _save_jpeg(scene.image, base / "images" / split_dir / f"{name}.jpg", params.jpeg_quality)
            raw, train = coco_stuff_label_maps(scene, ids)
            Image.fromarray(raw, mode="L").save(base / "annotations" / split_dir / f"{name}.png", format="PNG")
            Image.fromarray(train, mode="L").save(base / "annotations" / split_dir / f"{name}_labelTrainIds.png",
                                                  format="PNG")
    return captions


def _tasks(params: SyntheticParams, root: Path, ids: BenchmarkIds | None, chunk: int,
           products=("corpus", "voc", "coco_stuff")) -> list[tuple]:
    tasks, pdict = [], asdict(params)
    if "corpus" in products:
        tasks += [("corpus", "", s, min(s + chunk, params.pairs), str(root), pdict, None)
                  for s in range(0, params.pairs, chunk)]
    for product in ("voc", "coco_stuff"):
        if product not in products:
            continue
        for split, count in (("train", params.train_images), ("val", params.val_images)):
            tasks += [(product, split, s, min(s + chunk, count), str(root), pdict, ids) for s in range(0, count, chunk)]
    return tasks


def _make_dirs(params: SyntheticParams, root: Path, products) -> None:
    if "corpus" in products:
        for shard in range((params.pairs - 1) // _SHARD_SIZE + 1):
            (root / CORPUS_DIR / "images" / f"{shard:05d}").mkdir(parents=True)
    if "voc" in products:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (root / VOC_DIR / sub).mkdir(parents=True)
    if "coco_stuff" in products:
        for sub in ("images", "annotations"):
            for split in ("train2017", "val2017"):
                (root / COCO_STUFF_DIR / sub / split).mkdir(parents=True)


def _run(params: SyntheticParams, root: Path, ids: BenchmarkIds | None, workers: int,
         progress: Callable[[int, int], None] | None, products) -> list[str]:
    """Render every product into ``root``; returns the corpus captions in index order."""
    _make_dirs(params, root, products)
    tasks = _tasks(params, root, ids, chunk=200, products=products)
    total = sum(t[3] - t[2] for t in tasks)
    captions: list[str] = []
    done = 0
    if progress:
        progress(0, total)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
            for task, result in zip(tasks, pool.map(_render_chunk, tasks), strict=True):
                captions += result
                done += task[3] - task[2]
                if progress:
                    progress(done, total)
    else:
        for task in tasks:
            captions += _render_chunk(task)
            done += task[3] - task[2]
            if progress:
                progress(done, total)
    return captions


def _write_lists(params: SyntheticParams, root: Path, captions: list[str], products) -> None:
    if "corpus" in products:
        lines = ["caption\turl"] + [f"{c}\t{_corpus_relpath(i)}" for i, c in enumerate(captions)]
        (root / CORPUS_DIR / PAIRS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if "voc" in products:
        for split, count in (("train", params.train_images), ("val", params.val_images)):
            names = [_eval_name("voc", split, i) for i in range(count)]
            (root / VOC_DIR / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
                "".join(f"{n}\n" for n in names), encoding="utf-8")


def _manifest(params: SyntheticParams) -> dict:
    return {
        "generator": "tcl.data.synthetic",
        "version": GENERATOR_VERSION,
        "params": asdict(params),
        "counts": {"corpus_pairs": params.pairs,
                   "voc": {"train": params.train_images, "val": params.val_images},
                   "coco_stuff164k": {"train2017": params.train_images, "val2017": params.val_images}},
        "vocabulary": {"objects": {k.name: {"voc": k.voc_name, "coco": k.coco_name} for k in OBJECT_KINDS},
                       "stuff": {s.name: s.coco_stuff_name for s in STUFF_KINDS}},
        "layout": {"corpus": f"{CORPUS_DIR}/{PAIRS_FILE} (caption<TAB>url, urls relative to {CORPUS_DIR}/)",
                   "voc": VOC_DIR, "coco_stuff": COCO_STUFF_DIR},
    }


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(out: Path, manifest: dict) -> bool:
    """Cheap completeness check beyond the manifest: the lists and the image counts."""
    params = manifest["params"]
    try:
        pairs = (out / CORPUS_DIR / PAIRS_FILE).read_text(encoding="utf-8").count("\n") - 1
        jpegs = sum(1 for _ in (out / CORPUS_DIR / "images").glob("*/*.jpg"))
        voc = sum(1 for _ in (out / VOC_DIR / "SegmentationClass").glob("*.png"))
        coco = sum(1 for _ in (out / COCO_STUFF_DIR / "annotations").glob("*/*_labelTrainIds.png"))
    except OSError:
        return False
    evals = params["train_images"] + params["val_images"]
    return pairs == jpegs == params["pairs"] and voc == coco == evals


def generate_synthetic(out: str | os.PathLike, params: SyntheticParams | None = None, workers: int = 1,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the synthetic world (corpus, VOC and COCO-Stuff look-alikes) into ``out``, atomically.

    Everything is built in a hidden temporary folder beside ``out`` and renamed into place at the
    end, so an interrupted run leaves either the previous complete output or nothing (a killed
    process may leave a hidden ``.<name>.tmp-*`` folder behind, never a half-written ``out``).
    A rerun with the same parameters over a complete output returns at once (``skipped``); other
    parameters replace it. A folder that is neither empty nor ours is refused. Outputs are
    byte-identical for a given seed, whatever ``workers`` is.

    Returns ``{"skipped": bool, "seconds": float, "pairs_per_s": float | None, "manifest": dict}``.
    """
    params = params or SyntheticParams()
    if workers < 1:
        raise SyntheticError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    manifest = _manifest(params)
    if out.exists() and not out.is_dir():
        raise SyntheticError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        existing = _read_manifest(out)
        if existing is None or existing.get("generator") != manifest["generator"]:
            raise SyntheticError(f"{out} exists and holds no synthetic-world {MANIFEST_FILE}: "
                                 "refusing to replace it (remove it or choose another output)")
        if existing == manifest and _is_complete(out, existing):
            return {"skipped": True, "seconds": 0.0, "pairs_per_s": None, "manifest": existing}
    ids = benchmark_ids()  # before any work: a vocabulary name unknown to mmseg fails here
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        products = ("corpus", "voc", "coco_stuff")
        captions = _run(params, tmp, ids, workers, progress, products)
        _write_lists(params, tmp, captions, products)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old)  # a directory may replace an empty directory
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    return {"skipped": False, "seconds": seconds, "pairs_per_s": params.pairs / seconds if seconds else None,
            "manifest": manifest}


def measure_throughput(pairs: int = 1000, image_size: int = 96, workers: int = 1, seed: int = 0) -> dict:
    """Time corpus generation (render, JPEG encode, write, caption list) in a temporary folder.

    Returns ``{"pairs": int, "seconds": float, "pairs_per_s": float, "workers": int}``; does not
    import mmseg, so it measures the generator alone.
    """
    params = SyntheticParams(seed=seed, pairs=pairs, image_size=image_size)
    if workers < 1:
        raise SyntheticError(f"workers must be >= 1, got {workers}")
    with tempfile.TemporaryDirectory(prefix="tcl-synthetic-") as tmp:
        start = time.perf_counter()
        captions = _run(params, Path(tmp), None, workers, None, ("corpus",))
        _write_lists(params, Path(tmp), captions, ("corpus",))
        seconds = time.perf_counter() - start
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "workers": workers}
