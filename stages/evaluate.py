"""DVC stage: evaluate a model on one zero-shot segmentation benchmark (TCL_SPEC §4).

    python stages/evaluate.py --benchmark synthetic_voc --checkpoint models/tcl/best.pt
    python stages/evaluate.py --benchmark voc --checkpoint tcl.pth --clip-weights ViT-B-16.pt
    python stages/evaluate.py --benchmark synthetic_voc --clip models/clip --baseline step0
    python stages/evaluate.py --benchmark t_synthetic_voc --checkpoint models/tcl/best.pt --sweep-bg-thresh \
        --out metrics/bg_thresh.json      # choose bg_thresh on a training split (evaluate.bg_thresh_candidates)
    python stages/evaluate.py --benchmark synthetic_voc --checkpoint ... --bg-thresh metrics/bg_thresh.json
    torchrun --nproc-per-node 8 stages/evaluate.py --benchmark coco_stuff --checkpoint ...   # images split

Model: a training checkpoint or the official tcl.pth (--checkpoint), or, as baselines on a saved CLIP
(--clip), the untrained TCL ("step0", the MaskCLIP-style start of training) or the CLIP's own dense
features ("maskclip": the KP branch alone, kp_w 1, no PAMR). Protocol, settings and data roots come
from the evaluate section of params.yaml (data roots are relative to its folder, the project root;
--setting switches official / no_pamr). Writes
--out (default metrics/eval/<benchmark>.json: mIoU, aAcc, per-class IoU, settings, images/s) and a
few image | ground truth | prediction panels (--overlays), prints mmseg's per-class table, and logs the
same to MLflow as a child run of the training run when known (--parent-run-id, env
TCL_MLFLOW_PARENT_RUN_ID, or the run recorded in the checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP (see stages/train.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcl.stage_parser import StageParser  # noqa: E402

PROG = "evaluate"
BASELINES = ("step0", "maskclip")



def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(PROG, __doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (params.yaml)")
    parser.add_argument("--benchmark", required=True, help="registered benchmark name (tcl.eval.BENCHMARKS)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint (models/tcl/best.pt) or official tcl.pth")
    source.add_argument("--clip", type=Path, help="saved CLIP folder (models/clip), with --baseline")
    parser.add_argument("--clip-weights", help="CLIP weights for --checkpoint (required for the official tcl.pth)")
    parser.add_argument("--baseline", choices=BASELINES, help="with --clip: step0 (untrained TCL) or maskclip")
    parser.add_argument("--out", type=Path, help="metrics JSON (metrics/eval/<benchmark>.json)")
    parser.add_argument("--overlays", default="outputs/eval",
                        help="folder for the qualitative PNG panels (outputs/eval); '' for none")
    parser.add_argument("--setting", choices=("official", "no_pamr"), help="override evaluate.setting")
    parser.add_argument("--bg-thresh", help="override the background threshold: a number, or the JSON that "
                                            "--sweep-bg-thresh wrote (its best value)")
    parser.add_argument("--sweep-bg-thresh", action="store_true",
                        help="instead of evaluating, score every evaluate.bg_thresh_candidates value and write "
                             "{candidates: {thresh: mIoU}, best} to --out (use a training split, t_*)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (quick checks)")
    parser.add_argument("--device", default="auto", help="auto (the GPU of this rank if any), cpu, cuda, cuda:1")
    parser.add_argument("--parent-run-id", help="MLflow run to nest under (else env TCL_MLFLOW_PARENT_RUN_ID or "
                                                "the checkpoint's training run)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    return parser


def _load_model(args, params):
    """(model, description, training run id or None)."""
    from tcl import TCL
    from tcl.checkpoint import CheckpointError, load_model, model_from_checkpoint, read_checkpoint
    from tcl.train.clip_pretraining import load_saved_clip

    if args.checkpoint is not None:
        info = {"source": "checkpoint", "checkpoint": str(args.checkpoint)}
        try:
            payload = read_checkpoint(args.checkpoint)
        except CheckpointError:
            if not args.checkpoint.is_file():
                raise
            return load_model(args.checkpoint, clip_weights=args.clip_weights), {**info, "format": "official"}, None
        model = model_from_checkpoint(payload, args.clip_weights, str(args.checkpoint))
        info.update(format="training", step=payload.get("step"))
        return model, info, payload.get("extra", {}).get("mlflow_run_id")
    if not (args.clip / "clip.json").is_file():
        raise FileNotFoundError(f"{args.clip}/clip.json not found: --clip takes the prepare_clip stage's output folder")
    model = TCL(load_saved_clip(args.clip), params.model)
    return model, {"source": "baseline", "baseline": args.baseline, "clip": str(args.clip)}, None


def _bg_thresh(value: str) -> float:
    """A threshold given as a number or as the JSON file of a sweep (its ``best``)."""
    import json

    try:
        thresh = float(value)
    except ValueError:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--bg-thresh: {value!r} is neither a number nor a file") from None
        try:
            thresh = float(json.loads(path.read_text())["best"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--bg-thresh: {path} holds no 'best' threshold (write it with --sweep-bg-thresh)") \
                from None
    if not 0 <= thresh <= 1:
        raise ValueError(f"--bg-thresh must be in [0, 1], got {thresh}")
    return thresh


def _log_mlflow(args, result: dict, model_info: dict, parent: str | None) -> None:
    from tcl.tracking import RunTracker

    with RunTracker.start(f"eval-{result['benchmark']}", parent_run_id=args.parent_run_id or parent,
                          stage="evaluate", tags={"benchmark": result["benchmark"]}) as tracker:
        tracker.log_params({"benchmark": result["benchmark"], "model": model_info, "evaluate": result["settings"]})
        metrics = {key: result[key] for key in ("miou", "aacc", "macc", "images_per_s", "seconds", "num_images")}
        metrics.update({f"iou/{name}": value for name, value in result["per_class_iou"].items()})
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
        tracker.log_dict(result, f"eval/{result['benchmark']}.json")
        for path in result["overlays"]:
            tracker.log_artifact(path, f"overlays/{result['benchmark']}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clip is not None and args.baseline is None:
        parser.error("--clip needs --baseline step0 or --baseline maskclip")
    if args.checkpoint is not None and args.baseline is not None:
        parser.error("--baseline goes with --clip, not --checkpoint")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")

    import torch

    from tcl.atomic import write_json_atomic
    from tcl.checkpoint import CheckpointError
    from tcl.config import ConfigError, load_params
    from tcl.eval import EvalDataError, UnknownBenchmarkError, evaluate_benchmark, get_benchmark, sweep_bg_thresh
    from tcl.eval.datasets import check_layout
    from tcl.model import WeightsError
    from tcl.train.runtime import start_runtime

    runtime = None
    try:
        params = load_params(args.params)
        bench = get_benchmark(args.benchmark)
        config = params.evaluate if args.setting is None else replace(params.evaluate, setting=args.setting)
        root = args.params.resolve().parent  # data roots are relative to the project root: the params file's folder
        if args.bg_thresh is not None:
            config = replace(config, bg_thresh=_bg_thresh(args.bg_thresh))
        out = args.out or Path("metrics/eval") / f"{bench.name}.json"
        if args.sweep_bg_thresh and config.bg_thresh is not None:  # fixed (the paper setting): nothing to choose
            write_json_atomic(out, {"benchmark": bench.name, "candidates": {}, "best": config.bg_thresh, "fixed": True})
            print(f"{bench.name}: bg_thresh fixed at {config.bg_thresh} by the parameters -> {out}")
            return 0
        check_layout(bench, config.data_roots, root)  # before loading a model: missing data fails in a second
        runtime = start_runtime()
        device = runtime.device if args.device == "auto" else torch.device(args.device)
        model, model_info, train_run = _load_model(args, params)
        if model_info.get("baseline") == "maskclip":  # the frozen CLIP's dense features alone (TCL_SPEC §2.10)
            config = replace(config, pamr=False, kp_w=1.0)
        model = model.to(device).eval()
        if args.sweep_bg_thresh:
            sweep = sweep_bg_thresh(model, bench.name, config, root=root, limit=args.limit)
            sweep["model"] = model_info
            if runtime.is_main:
                write_json_atomic(out, sweep)
                print(f"{bench.name}: mIoU per bg_thresh {sweep['candidates']}; best {sweep['best']} -> {out}")
            return 0
        overlay_dir = Path(args.overlays) if args.overlays else None  # (Path("") would be the cwd)
        if runtime.is_main:
            print(f"evaluating {model_info} on {bench.name} ({bench.dataset}) with {config.settings()} on {device}, "
                  f"{runtime.world_size} process(es)", flush=True)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if done == total or time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                print(f"{bench.name}: {done}/{total} images (this process)", flush=True)

        result = evaluate_benchmark(model, bench.name, config, root=root, limit=args.limit, overlay_dir=overlay_dir,
                                    progress=progress)
        result["model"] = model_info
        if runtime.is_main:
            write_json_atomic(out, result)
            print(f"{bench.name}: mIoU {result['miou']} aAcc {result['aacc']} on {result['num_images']} images, "
                  f"{result['images_per_s']:.2f} images/s -> {out}", flush=True)
            if args.mlflow:
                _log_mlflow(args, result, model_info, train_run)
    except (ConfigError, UnknownBenchmarkError, EvalDataError, CheckpointError, WeightsError, OSError,
            ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if runtime is not None:
            runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
