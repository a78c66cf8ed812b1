"""DVC stage: register the final model in the MLflow model registry (pipeline.register_name / _alias).

    python stages/register.py --params params.yaml --checkpoint models/tcl/best.pt \\
        --report metrics/report/report.json --out metrics/registered.json

Logs the checkpoint as an MLflow pyfunc model (tcl.serving) in a run "register" (a child of the
pipeline's parent run when there is one) and registers it as a new version of
pipeline.register_name, tagged with the report's mean mIoU. The alias (pipeline.register_alias,
e.g. champion) moves to the new version unless the version holding it scored a higher mean mIoU,
so a sweep of weaker experiments never takes it away. Writes --out (name, version, alias, whether
it moved, model URI) atomically.
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
    parser.add_argument("--out", type=Path, default=Path("metrics/registered.json"), help="(metrics/registered.json)")
    args = parser.parse_args(argv)
    return run_stage(PROG, lambda: register(args))


def register(args) -> int:
    """The register stage's work; raises ``TCLError`` (``RegistryError``: exit 1, see ``run_stage``)."""
    from tcl.atomic import write_json_atomic
    from tcl.config import ConfigError, load_params
    from tcl.eval.report import read_mean_miou

    params = load_params(args.params).pipeline
    if not args.checkpoint.is_file():
        raise ConfigError(f"checkpoint {args.checkpoint} not found: run the train stage first")
    score = read_mean_miou(args.report)

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
                                            tracking_uri=tracker.tracking_uri)
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
                  "model_uri": f"models:/{name}/{version}", "checkpoint": str(args.checkpoint)}
        tracker.set_tags({"registered_version": version, "alias_moved": moved})
        write_json_atomic(args.out, record)
    where = f"alias {alias!r} now points at it" if moved else f"alias {alias!r} stays (its version scored {held})"
    print(f"{PROG}: {args.checkpoint} → {name} version {version} (mean mIoU {score}); {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
