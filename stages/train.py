"""DVC stage: train TCL's masker on the frozen CLIP from the prepare_clip stage.

    python stages/train.py --params params.yaml --clip models/clip --out models/tcl
    torchrun --nproc-per-node 2 stages/train.py ...            # several processes (gloo on CPU, NCCL on GPU)
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 stages/train.py ...   # multi-node (each node)

Writes <out>/latest.pt (every train.checkpoint_every steps and after each validation), <out>/best.pt
(best val/<train.val_metric>; the final model when no validation is configured), <out>/config.json,
and <metrics>/train.json, train_curve.csv, val_curve.csv. A run that stops (SIGTERM/Ctrl-C, or killed)
continues where it left off with --resume auto (the default) and ends with the same weights. A full
disk ends the stage with one line naming the file (exit 1); the checkpoint before it stays intact
(this command resumes from it; dvc repro removes the stage's outputs and starts over), and temporary
files of an interrupted write are removed when the stage starts again.
Tracking goes to MLflow (MLFLOW_TRACKING_URI, default: the embedded store ./mlflow.db).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402

PROG = "train"


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(PROG, __doc__)
    parser.add_params_arguments(steps_key="train.steps")
    parser.add_argument("--clip", type=Path, default=Path("models/clip"), help="prepare_clip's output (models/clip)")
    parser.add_argument("--out", type=Path, default=Path("models/tcl"), help="checkpoint folder (models/tcl)")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="metrics folder (metrics)")
    parser.add_argument("--resume", default="auto",
                        help="auto (continue from <out>/latest.pt if present), none, or a checkpoint path")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)

    from tcl.atomic import remove_stale_temporaries
    from tcl.train.trainer import train

    def work() -> int:
        params = parser.load_params(args)
        check_inputs(params, args)  # everything that can fail before training, before an output exists
        if os.environ.get("RANK", "0") == "0":  # the one writer: temporaries of a write killed earlier
            for folder in (args.out, args.metrics):
                remove_stale_temporaries(folder)
        summary = train(params, args.clip, args.out, resume=args.resume, metrics_dir=args.metrics,
                        track=not args.no_tracking)
        if summary["stopped_early"]:  # not finished: DVC must not record this as the stage's output
            print(f"{PROG}: error: stopped at step {summary['step']} of {params.train.steps}; rerun to resume "
                  f"from {args.out / 'latest.pt'}", file=sys.stderr)
            return 143
        if os.environ.get("RANK", "0") == "0":
            print(f"{PROG}: done at step {summary['step']}: {args.out}")
        return 0

    def resumable() -> str:  # the checkpoint before the failed write is intact: say so
        latest = args.out / "latest.pt"
        return f"{latest} holds the last checkpoint and this command resumes from it" if latest.is_file() else ""

    return run_stage(PROG, work, after_disk_full=resumable)


def check_inputs(params, args) -> None:
    """The saved CLIP (and that it is ``clip.model``'s), the shards, the validation benchmarks' data,
    the checkpoint to resume from and the output folders; raises ``ConfigError``, creates nothing."""
    from tcl.checkpoint import check_saved_clip
    from tcl.config import ConfigError
    from tcl.preflight import check_eval_data, check_output_folders, check_shards

    check_saved_clip(args.clip, params.clip.model)
    check_shards(params.data)
    # The trainer reads the validation sets relative to the working directory (the project root under DVC).
    check_eval_data(params.train.val_benchmarks, params.evaluate, "train.val_benchmarks")
    if args.resume not in ("auto", "none") and not Path(args.resume).is_file():
        raise ConfigError(f"--resume: {args.resume} not found (auto, none, or a checkpoint file)")
    check_output_folders(args.out, args.metrics)


if __name__ == "__main__":
    sys.exit(main())
