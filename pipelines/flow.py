"""Prefect flow ``tcl-pipeline``: the DVC pipeline of ``dvc.yaml`` as Prefect tasks, one per stage.

Each task runs its stage through DVC (``dvc repro --single-item <stage>``), so DVC's cache decides
what is up to date and ``dvc.lock`` stays the record; the task streams the stage's output to the
Prefect log (blank lines left out) and fails on a non-zero exit. Flow parameters become DVC
parameter overrides (``dvc exp run -S`` semantics, written into ``params.yaml`` after the whole file
is validated, before any stage starts) for this flow run only: :mod:`pipelines.params_backup` puts
the file back however the run ends. A flow run that DVC finds nothing to do for records nothing
(no MLflow parent run, no artifacts). Downloads retry with exponential backoff (img2dataset resumes
finished shards), training runs under ``torchrun`` (the train stage's command), evaluations are
mapped over the models (the trained one, each baseline) with at most ``eval_concurrency`` at a
time. One MLflow parent run per flow run holds every stage's run; the flow publishes the benchmark
table (with the report's mean as its last row) as a Prefect table artifact and links that MLflow
run. A flow run holds the checkout's workspace lock (:mod:`pipelines.lock`) from start to finish,
as ``make run`` does: a second pipeline run in the same checkout fails at once, naming the first.
Run it once with ``python -m pipelines.flow`` (bad parameters: one line on stderr, exit status 2,
before any flow run; a failed stage: exit status 1); schedule it with ``prefect.yaml`` or
``python -m pipelines.serve``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipelines import dvc_cli as dvc
from pipelines.inputs import missing_inputs
from pipelines.lock import workspace_lock
from pipelines.overrides import add_override_arguments, load_overrides_file, parse_overrides, validate_overrides
from pipelines.params_backup import overrides_applied, recover
from pipelines.parent_run import PipelineRun, benchmark_table, read_report
from tcl.errors import ConfigError, TCLError
from tcl.tracking import STAGE_ENV

__all__ = ["tcl_pipeline", "run_stage", "stage_groups", "checked_overrides", "PROJECT_ROOT"]

PROG = "flow"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Stages evaluated as one mapped group (base names, before "@").
EVAL_STAGES = ("evaluate", "baseline")


def checked_overrides(root: Path, overrides: list[str] | None, overrides_file: str | None):
    """``(changes, params)``: a flow run's overrides (``overrides_file``'s, relative to ``root``, then the
    ``key=value`` items) and the parameters ``root/params.yaml`` would hold with them; raises ``ConfigError``."""
    changes = (load_overrides_file(root / overrides_file) if overrides_file else []) + parse_overrides(overrides or [])
    return changes, validate_overrides(root / "params.yaml", changes)


def _log_line(logger) -> Callable[[str], None]:
    """A streamed output line → one Prefect log record; blank lines (DVC's spacing around each stage, the
    empty lines stage scripts print) are dropped, they would each be an empty record in the task log."""
    def log(line: str) -> None:
        if line.strip():
            logger.info(line)
    return log


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(stage: str, root: str, env: dict[str, str], force: bool = False) -> str:
    """``dvc repro --single-item <stage>`` with the stage's output streamed to the Prefect log.

    ``env``: only the variables the pipeline adds (the MLflow parent run); the rest of the process
    environment is inherited here, never passed as a parameter that Prefect would store.
    """
    tail = dvc.repro(stage, root=root, env=dvc.tool_env({**env, STAGE_ENV: stage}),
                     on_line=_log_line(get_run_logger()), force=force)
    return "skipped" if any("didn't change, skipping" in line for line in tail) else "ran"


def stage_groups(stages: list[str]) -> list[tuple[str, list[str]]]:
    """Consecutive stages with one base name (``download@a``, ``download@b`` → ``download``), in DVC's
    file order, which is the pipeline's order; the evaluate stage and the baseline@ stages form one group."""
    def base(name: str) -> str:
        head = name.split("@", 1)[0]
        return "evaluate" if head in EVAL_STAGES else head

    return [(key, list(group)) for key, group in groupby(stages, key=base)]


@flow(name="evaluate-benchmarks")
def evaluate_benchmarks(stages: list[str], root: str, env: dict[str, str], force: bool = False) -> list[str]:
    """The evaluate and baseline@ stages (one per model), mapped; the caller sets the task runner's concurrency."""
    futures = run_stage.with_options(tags=["tcl-evaluate"]).map(stages, root=unmapped(root), env=unmapped(env),
                                                                  force=unmapped(force))
    return futures.result()


def _mean_row(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's mean as a last table row (``benchmark`` = ``mean (N)``, N benchmarks averaged; training
    splits are left out, as in report.md), with the table's columns; none when the report has no mean."""
    mean = report.get("mean")
    if not isinstance(mean, dict) or mean.get("miou") is None:
        return []
    columns = dict.fromkeys(key for row in rows for key in row)
    counted = mean.get("benchmarks")
    label = f"mean ({len(counted)})" if isinstance(counted, list) else "mean"
    return [{key: label if key == "benchmark" else mean.get(key) for key in columns}]


def _publish(run: PipelineRun, root: Path, mlflow_ui: str, with_report: bool = True) -> list[dict[str, Any]]:
    """The benchmark table as a Prefect table artifact, plus a link to the MLflow parent run."""
    report = read_report(root) if with_report else None
    rows = benchmark_table(report) if report else []
    if rows:
        create_table_artifact(table=rows + _mean_row(report, rows), key="tcl-benchmarks",
                              description="mIoU per benchmark and their mean, as in report.md "
                                          "(metrics/report/report.json)")
    report_md = root / "metrics/report/report.md"
    if with_report and report_md.is_file():
        create_markdown_artifact(report_md.read_text(), key="tcl-report", description="metrics/report/report.md")
    url = run.ui_url(mlflow_ui)
    if url:
        create_link_artifact(url, link_text=f"MLflow run {run.run_id}", key="tcl-mlflow-run",
                             description=f"parent run of this flow run (open `mlflow ui` at {mlflow_ui})")
    return rows


@flow(name="tcl-pipeline", log_prints=True)
def tcl_pipeline(overrides: list[str] | None = None, overrides_file: str | None = None, force: bool = False,
                 eval_concurrency: int = 1, download_retries: int = 3, download_retry_delay: float = 10.0,
                 until: str | None = None, track: bool = True,
                 mlflow_ui: str = "http://127.0.0.1:5000", project_root: str | None = None) -> dict[str, Any]:
    """Run the TCL pipeline stage by stage through DVC.

    ``overrides``: ``key.path=value`` strings (``train.steps=200``), applied like ``dvc exp run -S``;
    ``overrides_file``: a YAML file of such keys (``configs/paper.yaml``), applied first. ``force``:
    re-run every stage. ``eval_concurrency``: evaluations at a time. ``download_retries``: attempts
    after a failed download (exponential backoff from ``download_retry_delay`` seconds). ``until``:
    stop after this stage (base name: ``download``, ``train``, ...). ``track``: MLflow parent run.
    ``mlflow_ui``: where ``mlflow ui`` serves, for the run link. ``project_root``: the checkout
    (default: this file's).
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    root = Path(project_root) if project_root else PROJECT_ROOT
    # One pipeline run per checkout at a time (they share params.yaml); held until the flow run ends.
    name = f"prefect flow run {flow_run.name or flow_run.id} (tcl-pipeline)"
    with workspace_lock(root, name):
        recover(root, logger.warning)  # overrides a killed run left behind go before params.yaml is read
        changes, params = checked_overrides(root, overrides, overrides_file)
        missing = missing_inputs(params, root)  # as make run: every missing input before any stage starts
        if missing:
            raise ConfigError(f"{len(missing)} input(s) missing: " + " | ".join(missing))
        # The base names do not depend on params.yaml (only the @items do): `until` is checked before it is written.
        names = [name for name, _ in stage_groups(dvc.stage_names(root))]
        if until is not None and until not in names:
            raise ConfigError(f"until={until!r} is not a stage of dvc.yaml (stages: {', '.join(names)})")
        # The overrides hold for this flow run only: params.yaml is put back however it ends (pipelines.params_backup).
        with overrides_applied(root, changes, command=name, say=logger.warning):
            if changes:
                logger.info("params.yaml overrides for this run: %s", ", ".join(f"{k}={v!r}" for k, v in changes))
            # Expanded with the overrides written: pipeline.baselines=[...] or download.sources change the
            # foreach stages (baseline@..., download@...) that exist in this run.
            groups = stage_groups(dvc.stage_names(root))
            if until is not None:
                groups = groups[:[name for name, _ in groups].index(until) + 1]
            if not force and not dvc.stale_stages(root, [s for _, stages in groups for s in stages]):
                # a nightly with nothing to do records nothing: no MLflow parent run, no artifacts
                logger.info("the pipeline is up to date (dvc status): nothing to do, nothing recorded")
                return {"mlflow_run_id": None, "benchmarks": [], "up_to_date": True}
            return _run_groups(root, groups, params, changes, force=force, eval_concurrency=eval_concurrency,
                               download_retries=download_retries, download_retry_delay=download_retry_delay,
                               complete=until is None or until in ("report", "register"), rest=until is None,
                               track=track,
                               mlflow_ui=mlflow_ui, flow_run_id=str(flow_run.id or ""))


def _run_groups(root: Path, groups: list[tuple[str, list[str]]], params, changes, *, force: bool,
                eval_concurrency: int, download_retries: int, download_retry_delay: float, complete: bool,
                rest: bool, track: bool, mlflow_ui: str, flow_run_id: str) -> dict[str, Any]:
    """The stage groups as tasks under one MLflow parent run, then the artifacts."""
    # The library never asks Prefect for the flow-run id (tcl.tracking reads only the environment):
    # the parent run gets it here as its tag, the stage processes through run.env().
    with PipelineRun.start(root, experiment=params.pipeline.experiment, kind="prefect",
                           overrides=[f"{k}={v}" for k, v in changes], flow_run_id=flow_run_id,
                           enabled=track) as run:
        env = run.env()
        for name, stages in groups:
            if name == "evaluate":
                runner = ThreadPoolTaskRunner(max_workers=max(1, eval_concurrency))
                evaluate_benchmarks.with_options(task_runner=runner)(stages, str(root), env, force)
            elif name == "download":
                retrying = run_stage.with_options(retries=download_retries, retry_jitter_factor=0.5,
                                                  retry_delay_seconds=exponential_backoff(download_retry_delay))
                for future in [retrying.submit(s, str(root), env, force) for s in stages]:
                    future.result()
            else:
                for stage in stages:
                    run_stage(stage, str(root), env, force)
        if rest:  # anything the groups did not cover (a stage added to dvc.yaml later) runs here, in DVC's order
            dvc.run_dvc(["repro"], root=root, env=dvc.tool_env(env), on_line=_log_line(get_run_logger()))
        run.record(root, with_report=complete)
        rows = _publish(run, root, mlflow_ui, with_report=complete)
    return {"mlflow_run_id": run.run_id, "benchmarks": rows, "up_to_date": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flow", description=__doc__.split("\n\n")[0])
    add_override_arguments(parser, "parameter override, as for dvc exp run -S (repeatable)")
    parser.add_argument("--overrides-file", help="YAML file of dotted keys (e.g. configs/paper.yaml)")
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--eval-concurrency", type=int, default=1, help="evaluations at a time (1)")
    parser.add_argument("--until", help="stop after this stage (download, prepare_clip, train, ...)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow parent run (stages still log theirs)")
    args = parser.parse_args(argv)
    try:  # checked again by the flow run; here first, so that a typo is one line and starts no flow run
        checked_overrides(PROJECT_ROOT, args.overrides, args.overrides_file)
    except TCLError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    state = tcl_pipeline(overrides=args.overrides, overrides_file=args.overrides_file, force=args.force,
                         eval_concurrency=args.eval_concurrency, until=args.until, track=not args.no_tracking,
                         return_state=True)
    if state.is_completed():
        return 0
    failure = state.result(raise_on_failure=False)
    if isinstance(failure, TCLError):  # bad parameters, missing inputs, a busy checkout: before any stage ran
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 2
    return 1  # a stage failed: Prefect's log above has its output


if __name__ == "__main__":
    sys.exit(main())
