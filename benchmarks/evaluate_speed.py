"""Benchmark the evaluation harness: images/s and peak memory at the official setting, end to end.

Usage:
    python benchmarks/evaluate_speed.py                       # ViT-B/16 (random weights), CPU, both modes
    python benchmarks/evaluate_speed.py --device cuda --precision bf16
    python benchmarks/evaluate_speed.py --images 2 --sizes 375x500 --modes fast

For each image size a benchmark folder is generated (smooth random images with random labels, in
the PASCAL VOC layout: 21 classes with background; and in the Cityscapes layout for 1024x2048:
19 classes) and :func:`tcl.eval.evaluate_benchmark` runs the paper protocol on it (short side 448,
448 crops, stride 224, PAMR, kp_w 0.3, bg_thresh 0.4, ``custom`` templates), in two modes:

* ``original``: as the official code ran it: one window per forward pass, one image at a time,
  one data-loader worker (text embeddings are computed once per benchmark in both modes);
* ``fast``: ``--window-batch`` windows per forward pass, windows of ``--image-batch`` images batched
  together, ``--workers`` data-loader processes, ``--precision`` autocast.

Each (size, mode) runs in its own process so that its peak memory is its own: max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU. With ``--precision`` bf16/fp16 the first image's scores
are also compared with fp32 (max |Δ| and the share of pixels whose label changes). The weights are
random: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = {  # benchmark -> (image pattern, label pattern, split file or None, label values)
    "voc": ("VOC2012/JPEGImages/{id}.jpg", "VOC2012/SegmentationClass/{id}.png",
            "VOC2012/ImageSets/Segmentation/val.txt", 21),
    "cityscapes": ("cityscapes/leftImg8bit/val/city/{id}_leftImg8bit.png",
                   "cityscapes/gtFine/val/city/{id}_gtFine_labelTrainIds.png", None, 19),
}


def make_dataset(folder: Path, benchmark: str, size: tuple[int, int], count: int) -> None:
    import numpy as np
    from PIL import Image

    image_pattern, label_pattern, split, classes = LAYOUTS[benchmark]
    rng = np.random.default_rng(0)
    ids = []
    for n in range(count):
        ident = f"img{n:03d}"
        coarse = rng.integers(0, 256, (size[0] // 32 + 1, size[1] // 32 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR)
        labels = rng.integers(0, classes, (size[0] // 64 + 1, size[1] // 64 + 1), dtype=np.uint8)
        for pattern, picture in ((image_pattern, image),
                                 (label_pattern, Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))):
            path = folder / pattern.format(id=ident)
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path, quality=90) if path.suffix == ".jpg" else picture.save(path)
        ids.append(ident)
    if split:
        (folder / split).parent.mkdir(parents=True, exist_ok=True)
        (folder / split).write_text("".join(f"{i}\n" for i in ids))


def run_single(args) -> dict:
    """One (size, mode) measurement in this process."""
    import torch

    from tcl import TCLConfig, create_tcl
    from tcl.eval import DataRoots, EvalConfig, evaluate_benchmark, get_benchmark
    from tcl.eval.datasets import EvalSamples, build_dataset, class_names
    from tcl.inference.sliding import sliding_window_scores

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_tcl(args.model, config=TCLConfig()).eval().to(device)
    folder = Path(args.data)
    roots = DataRoots(voc=str(folder / "VOC2012"), cityscapes=str(folder / "cityscapes"))
    fast = args.mode == "fast"
    config = EvalConfig(data_roots=roots, overlays=0, precision=args.precision if fast else "fp32",
                        window_batch=args.window_batch if fast else 1, image_batch=args.image_batch if fast else 1,
                        num_workers=args.workers if fast else 1)
    bench = get_benchmark(args.benchmark)
    dataset = build_dataset(bench, roots, config.protocols.paper)
    start = time.perf_counter()  # what the original paid at every evaluation call, done once per benchmark here
    text = model.build_text_embedding(class_names(dataset, bench.with_background), "custom")
    text_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = evaluate_benchmark(model, args.benchmark, config, print_table=False)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"benchmark": args.benchmark, "size": args.size, "mode": args.mode, "device": str(device),
              "threads": torch.get_num_threads(), "images": result["num_images"],
              "images_per_s": result["images_per_s"], "seconds": result["seconds"], "peak_mib": round(peak),
              "text_embedding_s": round(text_s, 2), **{k: result["settings"][k] for k in (
                  "precision", "window_batch", "image_batch", "num_workers")}}
    if fast and args.precision != "fp32":
        bgr = EvalSamples(dataset, [0])[0]["image"]
        rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).to(device)
        image = model.normalize(rgb[None].float() / 255.0)
        kw = dict(crop=448, stride=224, apply_pamr=True, kp_w=0.3, window_batch=args.window_batch,
                  bg_thresh=0.4 if bench.with_background else None)
        exact = sliding_window_scores(model, image, text, **kw)
        low = sliding_window_scores(model, image, text, precision=args.precision, **kw)
        record["vs_fp32"] = {"max_abs_diff": float((low - exact).abs().max()),
                             "changed_pixels": float((low.argmax(0) != exact.argmax(0)).float().mean())}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip config name")
    parser.add_argument("--sizes", nargs="+", default=["375x500", "1024x2048"],
                        help="HxW image sizes (1024x2048 uses the Cityscapes layout, others VOC)")
    parser.add_argument("--images", type=int, default=4, help="images per size")
    parser.add_argument("--modes", nargs="+", default=["original", "fast"], choices=["original", "fast"])
    parser.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--window-batch", type=int, default=16)
    parser.add_argument("--image-batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the records as JSON here")
    # internal: one measurement per process
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--benchmark", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single:
        print(json.dumps(run_single(args)))
        return
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            height, width = (int(v) for v in size.lower().split("x"))
            benchmark = "cityscapes" if (height, width) == (1024, 2048) else "voc"
            folder = Path(tmp) / size
            make_dataset(folder, benchmark, (height, width), args.images)
            for mode in args.modes:
                command = [sys.executable, __file__, "--single", "--data", str(folder), "--benchmark", benchmark,
                           "--size", size, "--mode", mode, "--model", args.model, "--device", args.device,
                           "--precision", args.precision, "--window-batch", str(args.window_batch),
                           "--image-batch", str(args.image_batch), "--workers", str(args.workers)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"evaluate_speed: {size} {mode} failed:\n{done.stderr[-3000:]}")
                record = json.loads(done.stdout.strip().splitlines()[-1])
                records.append(record)
                print(f"{args.model} {benchmark} {size} {mode:8s} {record['device']} x{record['threads']} threads "
                      f"window_batch {record['window_batch']} image_batch {record['image_batch']} "
                      f"workers {record['num_workers']} {record['precision']}: {record['images_per_s']:.3f} images/s "
                      f"({record['images']} images in {record['seconds']:.1f} s), peak {record['peak_mib']} MiB, "
                      f"text embeddings {record['text_embedding_s']:.1f} s"
                      + (f", vs fp32 {record['vs_fp32']}" if "vs_fp32" in record else ""), flush=True)
    if args.out:
        from tcl.atomic import write_json_atomic

        write_json_atomic(args.out, records)


if __name__ == "__main__":
    main()
