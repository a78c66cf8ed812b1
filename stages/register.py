"""DVC stage: register the final model in the MLflow model registry (pipeline.register_name / _alias).

    python stages/register.py --params params.yaml --checkpoint models/tcl/best.pt \\
        --report metrics/report/report.json --bg-thresh metrics/bg_thresh/tcl.json --out metrics/registered.json

Logs the checkpoint as an MLflow pyfunc model (tcl.serving) in a run "register" (a child of the
pipeline's parent run when there is one) and registers it as a new version of
pipeline.register_name, tagged with the report's mean mIoU. The alias (pipeline.register_alias,
e.g. champion) moves to the new version unless the version holding it scored a higher mean mIoU,
so a sweep of weaker experiments never takes it away.

The model is logged with the inference settings the pipeline evaluated it with, so that serving it
predicts what was scored: ``evaluate`` in params.yaml (:meth:`tcl.eval.EvalConfig.settings`, the
template and PAMR/KP settings) in the window geometry of the evaluated benchmarks' protocol, the
background threshold of --bg-thresh (the evaluate stage's choice), sliding windows as the benchmarks
use them. They are the pyfunc's config and request defaults (and its ``inference_settings.json``),
and go into --out with the checkpoint's MD5, where ``tcl predict`` / ``tcl serve-demo`` find them for
that checkpoint. Writes --out (name, version, alias, whether it moved, model URI, ``inference``)
atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402

PROG = "register"
MEAN_TAG = "mean_miou"


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(PROG, __doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (params.yaml)")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/tcl/best.pt"), help="(models/tcl/best.pt)")
    parser.add_argument("--report", type=Path, default=Path("metrics/report/report.json"),
                        help="the report stage's JSON, for the mean mIoU (metrics/report/report.json)")
    parser.add_argument("--bg-thresh", type=Path, default=Path("metrics/bg_thresh/tcl.json"),
                        help="the evaluate stage's record of the threshold the model was scored with "
                             "(metrics/bg_thresh/tcl.json)")
    parser.add_argument("--out", type=Path, default=Path("metrics/registered.json"), help="(metrics/registered.json)")
    args = parser.parse_args(argv)
    return run_stage(PROG, lambda: register(args))


def evaluated_options(evaluate, bg_thresh: Path):
    """The options the evaluate stages scored the model with, and where they came from (a dict for
    the records): ``evaluate`` (an ``EvalConfig``) in the protocol of its benchmarks (that of
    ``bg_thresh_split``, where the threshold was chosen, if they mix protocols), the threshold of
    the record ``bg_thresh``, sliding windows. Raises ``ConfigError``."""
    from dataclasses import replace

    from tcl.errors import ConfigError
    from tcl.eval import get_benchmark
    from tcl.eval.thresholds import read_bg_thresh
    from tcl.inference import PredictOptions

    if not bg_thresh.is_file():
        raise ConfigError(f"bg_thresh record {bg_thresh} not found: run the evaluate stage first "
                          "(dvc repro evaluate)")
    protocols = {get_benchmark(name).protocol for name in evaluate.benchmarks}
    protocol = protocols.pop() if len(protocols) == 1 else get_benchmark(evaluate.bg_thresh_split).protocol
    settings = replace(evaluate.settings(protocol), bg_thresh=read_bg_thresh(str(bg_thresh)))
    origin = {"protocol": protocol, "evaluate_setting": evaluate.setting, "bg_thresh_from": str(bg_thresh)}
    return PredictOptions(settings, sliding=True), origin  # the benchmarks score sliding windows


def register(args) -> int:
    """The register stage's work; raises ``TCLError`` (``RegistryError``: exit 1, see ``run_stage``)."""
    from tcl.atomic import write_json_atomic
    from tcl.config import ConfigError, load_params
    from tcl.eval.report import read_mean_miou
    from tcl.inference.recorded import describe_settings, file_md5, settings_record

    all_params = load_params(args.params)
    params = all_params.pipeline
    if not args.checkpoint.is_file():
        raise ConfigError(f"checkpoint {args.checkpoint} not found: run the train stage first")
    score = read_mean_miou(args.report)
    options, origin = evaluated_options(all_params.evaluate, args.bg_thresh)
    origin["checkpoint_md5"] = file_md5(args.checkpoint)  # tcl predict applies them to these bytes only

    from tcl.serving import log_segmentation_model
    from tcl.tracking import RegistryError, RunTracker, alias_holder_score, registry_errors
    from tcl.tracking.transport import make_client

    name, alias = params.register_name, params.register_alias
    with RunTracker.start("register", stage="register", tags={"registered_model": name}) as tracker:
        if not tracker.enabled:
            raise RegistryError(f"MLflow is not reachable ({tracker.tracking_uri}): nothing registered; "
                                "rerun this stage (dvc repro register) when it is")
        tracker.log_metrics({MEAN_TAG: score} if score is not None else {})
        tracker.flush()
        with registry_errors(f"registering {args.checkpoint} as {name!r}"):  # the tracker marks its run FAILED
            logged = log_segmentation_model(args.checkpoint, run_id=tracker.run_id, registered_name=name, alias=None,
                                            tracking_uri=tracker.tracking_uri, options=options,
                                            settings_origin=origin)
            client = make_client(tracker.tracking_uri)
            version = logged["version"]
            if score is not None:
                client.set_model_version_tag(name, version, MEAN_TAG, str(score))
            held = alias_holder_score(client, name, alias, MEAN_TAG)
            moved = held is None or score is None or score >= held
            if moved:
                client.set_registered_model_alias(name, alias, version)
        record = {"name": name, "version": str(version), "alias": alias, "alias_moved": moved,
                  "alias_holder_mean_miou": held, "mean_miou": score, "run_id": tracker.run_id,
                  "model_uri": f"models:/{name}/{version}", "checkpoint": str(args.checkpoint),
                  "inference": settings_record(options.settings, options.sliding, **origin)}
        tracker.set_tags({"registered_version": version, "alias_moved": moved})
        write_json_atomic(args.out, record)
    where = f"alias {alias!r} now points at it" if moved else f"alias {alias!r} stays (its version scored {held})"
    print(f"{PROG}: inference settings (as evaluated): {describe_settings(options.settings, options.sliding)}")
    print(f"{PROG}: {args.checkpoint} → {name} version {version} (mean mIoU {score}); {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
