"""What bf16 inference changes: labels and mIoU of a trained checkpoint in fp32 and bf16, per benchmark.

Usage:
    python benchmarks/precision_agreement.py --root /path/to/project      # models/tcl/best.pt, params.yaml
    python benchmarks/precision_agreement.py --root . --precision bf16 --limit 50 --out agreement.json

For every benchmark of the project's ``evaluate.benchmarks`` (the synthetic ones by default) each image
is scored twice with the evaluation protocol (:func:`tcl.inference.sliding.sliding_window_scores_many`,
the setting of ``params.yaml``): in fp32 (exact, the default) and in ``--precision``. The background
threshold is the one the pipeline used, read from ``metrics/eval/<benchmark>.json`` when present (else the
setting's). Printed per benchmark: the share of label pixels (at the original size) that are identical,
and both mIoUs with their difference; the JSON has the same. The project folder is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bg_thresh(root: Path, name: str, default):
    path = root / "metrics" / "eval" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text()).get("settings", {}).get("bg_thresh", default)
    return default


def agreement(model, name: str, config, root: Path, precision: str, limit: int | None) -> dict:
    import numpy as np
    import torch

    from tcl.eval import get_benchmark
    from tcl.eval.datasets import EvalSamples, build_dataset, class_names
    from tcl.eval.metric import AreaTotals
    from tcl.inference.scores import labels_at, with_background
    from tcl.inference.sliding import sliding_window_scores_many

    bench = get_benchmark(name)
    settings = config.settings(bench.protocol)
    dataset = build_dataset(bench, config.data_roots, getattr(config.protocols, bench.protocol), root)
    classes = list(dataset.metainfo["classes"])
    text = model.build_text_embedding(class_names(dataset, bench.with_background), settings.template).float()
    thresh = _bg_thresh(root, name, settings.bg_thresh) if bench.with_background else None
    count = len(dataset) if limit is None else min(limit, len(dataset))
    totals = {p: AreaTotals(classes) for p in ("fp32", precision)}
    same = pixels = 0
    for item in EvalSamples(dataset, list(range(count))):
        rgb = torch.from_numpy(np.ascontiguousarray(item["image"][..., ::-1]))
        image = model.normalize(rgb.permute(2, 0, 1)[None].float() / 255.0)
        gt = torch.from_numpy(item["gt"].astype(np.int64))
        labels = {}
        for p in totals:
            score = sliding_window_scores_many(model, [image], text, crop=settings.crop, stride=settings.stride,
                                               apply_pamr=settings.pamr, kp_w=settings.kp_w, bg_thresh=None,
                                               window_batch=config.window_batch, precision=p)[0]
            labels[p] = labels_at(with_background(score, thresh), tuple(gt.shape))
            totals[p].add(labels[p], gt)
        same += int((labels["fp32"] == labels[precision]).sum())
        pixels += labels["fp32"].numel()
    miou = {p: total.summary()["miou"] for p, total in totals.items()}
    return {"benchmark": name, "images": count, "bg_thresh": thresh, "precision": precision,
            "identical_label_pixels": same / pixels, "miou_fp32": miou["fp32"], f"miou_{precision}": miou[precision],
            "miou_difference": round(miou[precision] - miou["fp32"], 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project folder (params.yaml, data/, models/)")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/tcl/best.pt"), help="relative to --root")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--benchmarks", nargs="+", help="default: the params file's evaluate.benchmarks")
    parser.add_argument("--limit", type=int, help="first images of each benchmark only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("precision_agreement.json"))
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from tcl.atomic import write_json_atomic
    from tcl.config import load_params
    from tcl.inference import load_inference_model

    torch.set_num_threads(args.threads)
    root = args.root.resolve()
    config = load_params(root / "params.yaml").evaluate
    cwd = Path.cwd()
    os.chdir(root)  # the checkpoint names its CLIP weights relative to the project root
    try:
        model = load_inference_model(args.checkpoint)
    finally:
        os.chdir(cwd)
    records = []
    for name in args.benchmarks or list(config.benchmarks):
        record = agreement(model, name, config, root, args.precision, args.limit)
        records.append(record)
        print(f"{name:24s} {record['images']:4d} images  identical labels {100 * record['identical_label_pixels']:.3f}%"
              f"  mIoU fp32 {record['miou_fp32']:.2f}  {args.precision} {record[f'miou_{args.precision}']:.2f}"
              f"  Δ {record['miou_difference']:+.2f}", flush=True)
    write_json_atomic(args.out, {"root": str(root), "checkpoint": str(args.checkpoint), "benchmarks": records})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
