"""DVC stage: produce the frozen CLIP that TCL trains on.

    python stages/prepare_clip.py --params params.yaml --out models/clip

With ``clip.weights`` set (``openai`` or a weights file, the paper setting) the weights are loaded,
checked and written out; with ``clip.weights: null`` (the built-in synthetic world) a tiny open_clip
model described by ``clip.model`` is trained from scratch, contrastively, on the ``data`` stream for
``prepare_clip.steps`` steps. Writes ``clip.pt`` + ``clip.json`` and ``metrics.json``, atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402

PROG = "prepare_clip"


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(PROG, __doc__)
    parser.add_params_arguments(steps_key="prepare_clip.steps")
    parser.add_argument("--out", type=Path, default=Path("models/clip"), help="output folder (models/clip)")
    args = parser.parse_args(argv)
    return run_stage(PROG, lambda: prepare_clip(parser.load_params(args), args.out))


def prepare_clip(params, out: Path) -> int:
    """The stage's work: load or train the CLIP, write it; raises ``TCLError``."""
    import torch

    from pipelines.parent_run import stage_run
    from tcl.atomic import output_errors, write_json_atomic
    from tcl.checkpoint import save_clip
    from tcl.data.stream import TrainingStream, build_loader
    from tcl.model import create_clip
    from tcl.train.clip_pretraining import pretrain_clip

    check_inputs(params, out)  # before the output folder or an MLflow run exists
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    # a child of the pipeline's MLflow run under make run / the flow; marked FAILED by any error
    with stage_run(PROG) as tracker:
        tracker.log_params({"clip": params.clip, "prepare_clip": params.prepare_clip, "data": params.data})
        if params.clip.weights is not None:
            print(f"loading CLIP {params.clip.model} weights from {params.clip.weights} ...", flush=True)
            clip = create_clip(params.clip.model, params.clip.weights)
            metrics = {"source": str(params.clip.weights)}
        else:
            torch.manual_seed(params.data.seed)
            clip = create_clip(params.clip.model)
            size = sum(p.numel() for p in clip.parameters()) / 1e6
            print(f"training a {size:.2f} M-parameter CLIP from scratch for {params.prepare_clip.steps} steps",
                  flush=True)
            batches = iter(build_loader(TrainingStream(params.data)))

            def log(record: dict) -> None:
                print(f"step {record['step']}/{params.prepare_clip.steps} loss {record['loss']:.4f} "
                      f"acc {record['accuracy']:.3f} lr {record['lr']:.2e} {record['samples_per_s']:.0f} samples/s "
                      f"eta {record['eta_s']:.0f} s", flush=True)
                tracker.log_metrics({f"clip/{k}": v for k, v in record.items() if k not in ("step", "eta_s")},
                                    step=record["step"])

            trained = pretrain_clip(clip, batches, params.prepare_clip, log)
            metrics = {"source": "trained from scratch", **trained}
        save_clip(out, clip, params.clip.model)
        write_json_atomic(out / "metrics.json", metrics)
        tracker.log_dict(metrics, "clip/metrics.json")
    print(f"wrote {out / 'clip.pt'}")
    return 0


def check_inputs(params, out: Path) -> None:
    """The CLIP weights (a file, or ``openai`` cached or downloadable now) or, to train one, the
    shards; and the output folder. Raises ``ConfigError``; creates nothing."""
    from tcl.preflight import check_clip_weights, check_output_folders, check_shards

    if params.clip.weights is not None:
        check_clip_weights(params.clip.model, params.clip.weights)
    else:
        check_shards(params.data)
    check_output_folders(out)


if __name__ == "__main__":
    sys.exit(main())
