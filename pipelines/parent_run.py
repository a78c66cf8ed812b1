"""The MLflow parent run of one pipeline execution (``make run``, ``dvc exp run`` through it, a Prefect flow run).

Stage processes find it through the environment (:meth:`PipelineRun.env`): their own runs (train,
evaluate, register) open as its children, in its experiment, tagged with the git commit, the DVC
stage and experiment and the Prefect flow run (:func:`tcl.tracking.run_tags`). When the stages are
done, :meth:`PipelineRun.record` copies the run's outcome onto the parent (the benchmark table's
numbers as metrics, the parameters, ``params.yaml``, ``dvc.lock`` and the report as artifacts), so
two pipeline runs compare side by side in the MLflow UI. Tracking failures never fail the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PipelineRun", "REPORT_JSON", "read_report", "benchmark_table", "report_metrics", "stage_run"]

#: The report stage's machine-readable output (see ``stages/report.py``).
REPORT_JSON = Path("metrics/report/report.json")
# Report sections that are not metrics of their own: the table (logged row by row as ``<benchmark>.<column>``),
# the list of benchmarks in the mean, and ``by_benchmark``, which repeats the rows' mIoUs keyed by benchmark
# for `dvc metrics show`: logging it too would record every mIoU twice, under two names.
_NOT_METRICS = ("rows", "benchmarks", "by_benchmark")


def read_report(root: str | os.PathLike) -> dict | None:
    """The report stage's JSON, or None when it has not run."""
    try:
        return json.loads((Path(root) / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return None


def benchmark_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark from the report: ``benchmark``, ``miou``, each baseline's ``miou_<kind>``,
    ``aacc`` and ``num_images`` (the columns worth comparing; settings and speed stay in the report)."""
    rows = report.get("rows") or report.get("benchmarks") or []
    if isinstance(rows, Mapping):  # {name: {...}}
        rows = [{"benchmark": name, **value} for name, value in rows.items()]
    keep = ("benchmark", "miou", "aacc", "num_images")
    return [{k: v for k, v in row.items() if k in keep or k.startswith("miou_")}
            for row in rows if isinstance(row, Mapping)]


def _numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a nested mapping, as dotted keys (lists are skipped: they are tables, not values)."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers as metric keys, each value once: ``mean.miou``, ``mean.miou_<kind>``, ... and
    ``<benchmark>.<column>`` for each cell of :func:`benchmark_table`."""
    metrics = _numbers({k: v for k, v in report.items() if k not in _NOT_METRICS})
    for row in benchmark_table(report):
        name = row.get("benchmark")
        metrics.update({f"{name}.{k}": v for k, v in _numbers(row).items()} if name else {})
    return metrics


def stage_run(name: str):
    """A :class:`~tcl.tracking.RunTracker` for a stage that has no run of its own otherwise (prepare_clip,
    download): a child of the pipeline's parent run when a pipeline launched the stage (``make run``,
    the flow) or of its experiment's when a ``dvc exp run`` did, else disabled, so running the stage by
    hand or in a test never writes to a store."""
    from tcl.tracking import PARENT_RUN_ENV, RunTracker, dvc_experiment

    return RunTracker.start(name, stage=name, enabled=bool(os.environ.get(PARENT_RUN_ENV) or dvc_experiment()))


class PipelineRun:
    """One pipeline execution in MLflow. Create with :meth:`start`; use as a context manager."""

    def __init__(self, tracker, experiment: str, flow_run_id: str | None = None) -> None:
        self.tracker = tracker
        self.experiment = experiment
        self.flow_run_id = flow_run_id
        self._logged: set[str] = set()  # metric keys already on the run: record() twice must not log them twice

    @classmethod
    def start(cls, root: str | os.PathLike, *, experiment: str, kind: str, overrides: list[str] | None = None,
              flow_run_id: str | None = None, enabled: bool = True, exp_name: str | None = None) -> PipelineRun:
        """Open the parent run ``pipeline`` in ``experiment``; ``kind`` says what launched it (tag).

        The store is ``MLFLOW_TRACKING_URI``, else the embedded one of the project at ``root``. The run
        name tells executions apart (``exp_name``, the DVC experiment it runs, else the git commit, then
        ``overrides``: ``pipeline · three-steps · steps=3``); the stages' runs take the same label, and the
        parent has the tags its stages get from DVC (``dvc.root``, ``dvc.exp_name``, ``dvc.exp_baseline_rev``)
        and the git commit of ``root`` (not of the cwd).
        """
        from tcl.tracking import KIND_TAG, OVERRIDES_TAG, PARENT_RUN_NAME, RunTracker, default_tracking_uri, run_tags

        root = Path(root).resolve()
        tags = {KIND_TAG: kind, OVERRIDES_TAG: " ".join(overrides or []) or "(none)", "dvc.root": str(root)}
        if flow_run_id:
            tags["prefect.flow_run_id"] = flow_run_id
        if exp_name:  # what DVC gives the stages of `dvc exp run --name` (DVC_EXP_NAME, DVC_EXP_BASELINE_REV: HEAD)
            tags["dvc.exp_name"] = exp_name
            commit = run_tags(root=root).get("git.commit") if enabled else None
            if commit:
                tags["dvc.exp_baseline_rev"] = commit
        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
        tracker = RunTracker.start(PARENT_RUN_NAME, experiment=experiment, tags=tags, stage=PARENT_RUN_NAME,
                                   tracking_uri=uri, enabled=enabled, overrides=overrides, root=root)
        return cls(tracker, experiment, flow_run_id)

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def env(self) -> dict[str, str]:
        """Variables that make a stage process's runs children of this one."""
        from tcl.tracking import PREFECT_FLOW_RUN_ENV

        env = {"MLFLOW_EXPERIMENT_NAME": self.experiment, **self.tracker.child_env()}
        if self.flow_run_id:
            env[PREFECT_FLOW_RUN_ENV] = self.flow_run_id
        return env

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str | None:
        """The run's page in an ``mlflow ui`` served at ``base`` (on the model-training view: :func:`ui_url`)."""
        from tcl.tracking import ui_url

        experiment_id = getattr(self.tracker, "experiment_id", None)
        if not self.run_id or not experiment_id:
            return None
        return ui_url(base, experiment_id, self.run_id)

    def record(self, root: str | os.PathLike, with_report: bool = True) -> dict[str, float]:
        """Log the execution's outcome on the parent run; returns the metrics logged. ``with_report``:
        also the report's numbers (only when this execution brought the report up to date: a partial
        run must not show the numbers of an earlier one)."""
        root = Path(root)
        params_file = root / "params.yaml"
        with contextlib.suppress(OSError, yaml.YAMLError):  # the parameters are a nicety, not the record
            self.tracker.log_params(yaml.safe_load(params_file.read_text()) or {})
        for name in ("params.yaml", "dvc.lock"):
            if (root / name).is_file():
                self.tracker.log_artifact(root / name, "pipeline")
        report = read_report(root) if with_report else None
        metrics: dict[str, float] = {}
        if report is not None:
            metrics = {k: v for k, v in report_metrics(report).items() if k not in self._logged}
            self.tracker.log_metrics(metrics)
            self._logged.update(metrics)
            for path in sorted((root / REPORT_JSON.parent).iterdir()):
                if path.is_file():
                    self.tracker.log_artifact(path, "report")
        return metrics

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker.finish(status)

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # SystemExit here is a stop signal turned into an exit (pipelines.run): the run was killed, not failed
        stopped = exc_type is not None and issubclass(exc_type, KeyboardInterrupt | SystemExit)
        self.finish("KILLED" if stopped else "FAILED" if exc_type else "FINISHED")
