"""``make run``: the whole pipeline through DVC, under one MLflow parent run.

    python -m pipelines.run                          # dvc repro: the default pipeline (synthetic world)
    python -m pipelines.run -S train.steps=400       # dvc repro with an override, for this run only
    python -m pipelines.run --exp paper --overrides-file configs/paper.yaml   # dvc exp run -n paper -S ...
    python -m pipelines.run --force                  # dvc repro --force: every stage again

Parameters (params.yaml plus any overrides) are validated before anything runs: a bad key, type or
value is one line on stderr and exit status 2, and so is each missing input that no stage makes (URL
lists, benchmark folders, CLIP weights: the paper setting's, see README). When DVC finds nothing to
do, no run is recorded. Overrides hold for this run only: they are written into params.yaml (DVC's
stages read it) and the file is put back when the run ends, however it ends; after a SIGKILL, at the
start of the next pipeline run (pipelines.params_backup).
Otherwise a parent run ``pipeline`` opens in MLflow and every stage's run nests under it; when the
stages are done it receives the benchmark table's numbers, params.yaml, dvc.lock and the report.
Exit status 1: a stage failed (its output is above the last line).

One run at a time per checkout (they share params.yaml): a run holds the workspace lock
(pipelines.lock) from start to finish; a second one started meanwhile ends at once with exit
status 2 and one line naming the first (PID, start time, command), or waits for it with --wait.
Stopping a run (Ctrl-C, SIGTERM, SIGHUP, even SIGKILL) stops dvc and its stage processes too.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from pipelines.overrides import add_override_arguments
from pipelines.runner import CommandParser

PROG = "run"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m pipelines.run", doc=__doc__, label=PROG)
    parser.add_argument("targets", nargs="*", help="stages to bring up to date, with what they need (all)")
    add_override_arguments(parser, "parameter override, as for dvc exp run -S (repeatable; YAML values)")
    parser.add_argument("--overrides-file", type=Path, help="YAML file of dotted keys, e.g. configs/paper.yaml")
    parser.add_argument("--exp", metavar="NAME", help="run as DVC experiment NAME (dvc exp run) instead of dvc repro")
    parser.add_argument("--force", action="store_true", help="run every stage even if DVC finds it up to date")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow parent run (stages still log theirs)")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="project checkout (this one)")
    parser.add_argument("--wait", action="store_true", help="wait for a pipeline run already using this checkout")
    args = parser.parse_args(argv)

    from pipelines.inputs import missing_inputs
    from pipelines.lock import WorkspaceLock
    from pipelines.overrides import load_overrides_file, parse_overrides, to_dvc_set_args, validate_overrides
    from pipelines.params_backup import overrides_applied, recover
    from tcl.errors import TCLError

    root, params_file = args.root.resolve(), args.root.resolve() / "params.yaml"
    try:  # held until main returns (the last reference goes) or the process ends, however it ends
        command = shlex.join(["python", "-m", "pipelines.run", *(sys.argv[1:] if argv is None else argv)])
        _lock = WorkspaceLock.acquire(root, command, wait=args.wait,  # noqa: F841
                                      on_wait=lambda line: print(f"{PROG}: {line}", flush=True))
    except TCLError as err:  # the workspace is busy (or not a DVC project)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    say = lambda line: print(f"{PROG}: {line}", flush=True)  # noqa: E731
    try:
        recover(root, say)  # overrides a killed run left behind go before params.yaml is read
        changes = load_overrides_file(args.overrides_file) if args.overrides_file else []
        changes += parse_overrides(args.overrides)
        params = validate_overrides(params_file, changes)
        missing = missing_inputs(params, root)  # before dvc starts: all of them, one line each
        if missing:
            for line in missing:
                print(f"{PROG}: error: {line}", file=sys.stderr)
            return 2
        force = ["--force"] if args.force else []
        if args.exp:
            dvc_args = ["exp", "run", "--name", args.exp, *force, *to_dvc_set_args(params_file, changes),
                        *args.targets]
        else:
            dvc_args = ["repro", *force, *args.targets]
    except TCLError as err:  # bad parameters or overrides: nothing ran
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (a scheduler, `kill`), SIGHUP (the terminal closed) and Ctrl-C unwind alike, without a traceback:
    # dvc and the stage are stopped too (training writes its checkpoint; see pipelines.guard), the parent
    # run is marked KILLED/FAILED instead of left RUNNING and params.yaml loses this run's overrides.
    for stop in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: sys.exit(128 + signum))
    try:  # the overrides hold for this run only: params.yaml is put back however it ends (SIGKILL: at the next start)
        with overrides_applied(root, changes, command=command, write=not args.exp, say=say):
            return _run(args, root, dvc_args, changes, params)
    except TCLError as err:  # DVC's -S writer refused the overrides: nothing ran
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, root: Path, dvc_args: list[str], changes: list, params) -> int:
    """Ask DVC what is stale, open the parent run and run ``dvc <dvc_args>`` (params.yaml holds the overrides)."""
    from pipelines import dvc_cli as dvc
    from pipelines.parent_run import REPORT_JSON, PipelineRun
    from tcl.errors import TCLError

    if not args.exp and not args.force:
        try:
            stale = dvc.stale_stages(root, args.targets)
        except TCLError as err:  # DVC unable to say what is stale (a broken dvc.yaml): nothing ran
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        if not stale:
            print("run: the pipeline is up to date (dvc status): nothing to do")
            return 0
    overrides = [f"{k}={v}" for k, v in changes]
    kind = f"dvc exp run ({args.exp})" if args.exp else "dvc repro"
    with PipelineRun.start(root, experiment=params.pipeline.experiment, kind=kind, overrides=overrides,
                           enabled=not args.no_tracking, exp_name=args.exp) as run:
        print(f"run: {kind}" + (f" with {', '.join(overrides)}" if overrides else "")
              + (f"; MLflow parent run {run.run_id} (experiment {params.pipeline.experiment})" if run.run_id else ""),
              flush=True)
        try:
            dvc.run_dvc(dvc_args, root=root, env=dvc.tool_env(run.env()))
        except dvc.DvcError as err:  # a stage failed (exit 1), not the command line: its output is above
            run.finish("FAILED")
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 1
        run.record(root, with_report=not args.targets)
    table = root / REPORT_JSON.with_suffix(".md")
    if table.is_file() and not args.targets:
        print(f"\n{table.relative_to(root)}:\n{table.read_text()}")
    print("run: done. Results: metrics/ (dvc metrics show, dvc plots show); MLflow: make mlflow-ui "
          f"(store sqlite:///{root / 'mlflow.db'} unless MLFLOW_TRACKING_URI is set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
