"""DVC stage: evaluate a model on one zero-shot segmentation benchmark (protocol: docs/evaluation.md).

    python stages/evaluate.py --benchmark synthetic_voc --checkpoint models/tcl/best.pt
    python stages/evaluate.py --benchmark voc --checkpoint tcl.pth --clip-weights ViT-B-16.pt
    python stages/evaluate.py --benchmark synthetic_voc --clip models/clip --baseline step0
    python stages/evaluate.py --benchmark synthetic_voc --checkpoint ... -S evaluate.pamr=false   # any parameter
    python stages/evaluate.py --benchmark t_synthetic_voc --checkpoint models/tcl/best.pt --sweep-bg-thresh \
        --out metrics/bg_thresh.json      # choose bg_thresh on a training split (evaluate.bg_thresh_candidates)
    python stages/evaluate.py --benchmark synthetic_voc --checkpoint ... --bg-thresh metrics/bg_thresh.json
    python stages/evaluate.py --all-benchmarks --clip models/clip --baseline maskclip \
        --choose-bg-thresh metrics/bg_thresh/maskclip.json --out-dir metrics/baselines/maskclip   # one process
    torchrun --nproc-per-node 8 stages/evaluate.py --benchmark coco_stuff --checkpoint ...   # images split

Model: a training checkpoint or the official tcl.pth (--checkpoint), or, as baselines on a saved CLIP
(--clip), the untrained TCL ("step0", the MaskCLIP-style start of training) or the CLIP's own dense
features ("maskclip": the KP branch alone, kp_w 1, no PAMR). Protocol, settings and data roots come
from the evaluate section of params.yaml (data roots are relative to its folder, the project root;
--setting switches official / no_pamr). Writes, per benchmark,
--out (default <out-dir>/<benchmark>.json: mIoU, aAcc, per-class IoU, settings, images/s and windows/s,
the precision and device) and a
few image | ground truth | prediction panels (--overlays), prints mmseg's per-class table, and logs the
same to MLflow as a child run of the training run when known (--parent-run-id, env
TCL_MLFLOW_PARENT_RUN_ID, or the run recorded in the checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402
from tcl.eval.config import BASELINES, SETTINGS  # noqa: E402  (torch-free: --help stays fast)

PROG = "evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(PROG, __doc__)
    parser.add_params_arguments()
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--benchmark", nargs="+", help="registered benchmark name(s) (tcl.eval.BENCHMARKS)")
    which.add_argument("--all-benchmarks", action="store_true", help="every benchmark of evaluate.benchmarks")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint (models/tcl/best.pt) or official tcl.pth")
    source.add_argument("--clip", type=Path, help="saved CLIP folder (models/clip), with --baseline")
    parser.add_argument("--clip-weights", help="CLIP weights for --checkpoint (required for the official tcl.pth)")
    parser.add_argument("--baseline", choices=BASELINES, help="with --clip: step0 (untrained TCL) or maskclip")
    parser.add_argument("--out", type=Path, help="metrics JSON of a single benchmark (<out-dir>/<benchmark>.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("metrics/eval"),
                        help="folder of the <benchmark>.json results (metrics/eval)")
    parser.add_argument("--overlays", default="outputs/eval",
                        help="folder for the qualitative PNG panels (outputs/eval); '' for none")
    parser.add_argument("--setting", choices=tuple(SETTINGS), help="override evaluate.setting")
    parser.add_argument("--bg-thresh", help="override the background threshold: a number, or the JSON that "
                                            "--sweep-bg-thresh wrote (its best value)")
    parser.add_argument("--sweep-bg-thresh", action="store_true",
                        help="instead of evaluating, score every evaluate.bg_thresh_candidates value and write "
                             "{candidates: {thresh: mIoU}, best} to --out (use a training split, t_*)")
    parser.add_argument("--choose-bg-thresh", type=Path, metavar="FILE",
                        help="first choose the threshold on evaluate.bg_thresh_split as --sweep-bg-thresh does, "
                             "write that to FILE, then evaluate with it")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (quick checks)")
    parser.add_argument("--device", default="auto", help="auto (the GPU of this rank if any), cpu, cuda, cuda:1")
    parser.add_argument("--parent-run-id", help="MLflow run to nest under (else env TCL_MLFLOW_PARENT_RUN_ID or "
                                                "the checkpoint's training run)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    return parser


def _log_mlflow(args, result: dict, model_info: dict, parent: str | None) -> None:
    from tcl.tracking import RunTracker

    # Baselines get their own names, so that the trained model's eval-<benchmark> runs stand apart.
    kind = model_info.get("baseline")
    name = f"baseline-{kind}-{result['benchmark']}" if kind else f"eval-{result['benchmark']}"
    tags = {"benchmark": result["benchmark"], "model_kind": kind or "tcl", "precision": result["precision"]}
    with RunTracker.start(name, parent_run_id=args.parent_run_id or parent, stage="evaluate", tags=tags) as tracker:
        tracker.log_params({"benchmark": result["benchmark"], "model": model_info, "evaluate": result["settings"]})
        metrics = {key: result[key] for key in ("miou", "aacc", "macc", "images_per_s", "windows_per_s", "seconds",
                                                "num_images", "num_windows")}
        metrics.update({f"iou/{name}": value for name, value in result["per_class_iou"].items()})
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
        tracker.log_dict(result, f"eval/{result['benchmark']}.json")
        for path in result["overlays"]:
            tracker.log_artifact(path, f"overlays/{result['benchmark']}")


def _evaluate(model, bench, config, model_info: dict, args, out: Path, root: Path, runtime, train_run) -> None:
    from tcl.atomic import write_json_atomic
    from tcl.eval import evaluate_benchmark

    overlay_dir = Path(args.overlays) if args.overlays else None  # (Path("") would be the cwd)
    if runtime.is_main:
        print(f"evaluating {model_info} on {bench.name} ({bench.dataset}) with {config.settings(bench.protocol)} on "
              f"{runtime.device if args.device == 'auto' else args.device}, {runtime.world_size} process(es)",
              flush=True)
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
              f"{result['images_per_s']:.2f} images/s, {result['windows_per_s']:.2f} windows/s, {result['precision']} "
              f"on {result['device']} (text embeddings: cache {result['text_embedding']['cache']}) -> {out}",
              flush=True)
        if args.mlflow:
            _log_mlflow(args, result, model_info, train_run)


def check_inputs(args, params, to_score: list, to_sweep: list, config, source, root: Path,
                 written: list[Path]) -> None:
    """What this run reads and writes, before it loads a model or writes a file: the data of the
    benchmarks it scores or sweeps, the model's files (unless it only passes a fixed threshold
    through) and the output folders. Raises ``EvalDataError`` / ``ConfigError``; creates nothing."""
    from tcl.eval.datasets import check_layout
    from tcl.eval.sources import check_source
    from tcl.preflight import check_output_folders

    benches = to_score + to_sweep
    for bench in benches:
        check_layout(bench, config.data_roots, root)  # missing data fails in a second, not after the model loads
    if benches:
        check_source(source, params.clip.model)
    outputs = [path.parent for path in written]
    outputs += [(args.out or args.out_dir / f"{bench.name}.json").parent for bench in to_score]
    if args.overlays and to_score:
        outputs.append(Path(args.overlays))
    check_output_folders(*outputs)


def run(args, parser) -> int:
    """Choose the threshold if asked, then score the benchmarks (see the module docstring)."""
    from tcl.atomic import write_json_atomic
    from tcl.eval import get_benchmark, sweep_bg_thresh
    from tcl.eval.sources import ModelSource, baseline_config, load_source, resolve_device
    from tcl.eval.thresholds import fixed_record, plan_bg_thresh, read_bg_thresh
    from tcl.runtime import start_runtime

    params = parser.load_params(args)
    names = list(params.evaluate.benchmarks) if args.all_benchmarks else args.benchmark
    benches = [get_benchmark(name) for name in names]
    config = params.evaluate if args.setting is None else replace(params.evaluate, setting=args.setting)
    root = args.params.resolve().parent  # data roots are relative to the project root: the params file's folder
    if args.bg_thresh is not None:
        config = replace(config, bg_thresh=read_bg_thresh(args.bg_thresh))
    source = ModelSource(checkpoint=args.checkpoint, clip_weights=args.clip_weights, clip=args.clip,
                         baseline=args.baseline)
    # A threshold to choose first: on the given training split (--sweep-bg-thresh, nothing else to
    # score) or on evaluate.bg_thresh_split (--choose-bg-thresh, then the benchmarks with it).
    if args.sweep_bg_thresh:
        choice = plan_bg_thresh(config, args.out or args.out_dir / f"{benches[0].name}.json", benches[0])
        to_score = []
    else:
        choice, to_score = plan_bg_thresh(config, args.choose_bg_thresh), benches
    check_inputs(args, params, to_score, choice.to_sweep, config, source, root, choice.written)
    if choice.fixed is not None:  # (the paper setting): nothing to choose
        write_json_atomic(choice.record, fixed_record(choice))
        print(f"{choice.split.name}: bg_thresh fixed at {choice.fixed} by the parameters -> {choice.record}")
        if not to_score:
            return 0
    runtime = start_runtime()
    try:
        device = resolve_device(args.device, runtime.device)
        loaded = load_source(source, params.model)
        config = baseline_config(config, args.baseline)
        model = loaded.model.to(device).eval()
        for split in choice.to_sweep:
            sweep = {**sweep_bg_thresh(model, split.name, config, root=root, limit=args.limit), "model": loaded.info}
            if runtime.is_main:
                write_json_atomic(choice.record, sweep)
                print(f"{split.name}: mIoU per bg_thresh {sweep['candidates']}; best {sweep['best']} -> "
                      f"{choice.record}", flush=True)
            config = replace(config, bg_thresh=sweep["best"])
        for bench in to_score:
            out = args.out or args.out_dir / f"{bench.name}.json"
            _evaluate(model, bench, config, loaded.info, args, out, root, runtime, loaded.train_run)
    finally:
        runtime.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clip is not None and args.baseline is None:
        parser.error(f"--clip needs --baseline {' or --baseline '.join(BASELINES)}")
    if args.checkpoint is not None and args.baseline is not None:
        parser.error("--baseline goes with --clip, not --checkpoint")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.out is not None and (args.all_benchmarks or len(args.benchmark) > 1):
        parser.error("--out names one benchmark's result: use --out-dir with several benchmarks")
    if args.sweep_bg_thresh and (args.all_benchmarks or len(args.benchmark) > 1 or args.choose_bg_thresh):
        parser.error("--sweep-bg-thresh scores one training split: give one --benchmark, without --choose-bg-thresh")
    if args.choose_bg_thresh is not None and args.bg_thresh is not None:
        parser.error("--choose-bg-thresh and --bg-thresh both set the threshold: give one")
    return run_stage(PROG, lambda: run(args, parser))


if __name__ == "__main__":
    sys.exit(main())
