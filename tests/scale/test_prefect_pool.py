"""Path 6 of the scale-out suite: a Prefect work pool and worker, as docs/scale/prefect.md tells users.

A local ``prefect server start`` (private home and SQLite database), ``prefect work-pool create
tcl-local --type process``, ``prefect deploy --all`` from the project's prefect.yaml in a fresh copy of
the project, ``prefect worker start --pool tcl-local``; then runs of the deployments triggered with
``prefect deployment run`` and read back through the Prefect client: a tiny whole pipeline that
completes with its artifacts while the nightly deployment's runs wait on its schedule, and a run
whose report stage fails (state FAILED) and that ``prefect flow-run retry`` resumes, DVC skipping the
stages done before the failure. Minutes on 2 busy cores (the tiny pipeline alone is ~5 min).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest

from tests.mlflow_server import free_port
from tests.pipelines.conftest import copy_project
from tests.pipelines.test_full_pipeline import TINY_FULL

from .prefect_pool import PREFECT, prefect_cli, prefect_env, start_logged, stop_tree, wait_for_health

POOL = "tcl-local"  # the work pool prefect.yaml names
SWEEP = "tcl-pipeline/steps-sweep-pool"
NIGHTLY = "tcl-pipeline/nightly-pool"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Server, work pool, both deployments of prefect.yaml and one worker, for this module; all stopped by PID."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = tmp_path_factory.mktemp("prefect-pool")
    home = base / "home"
    home.mkdir()
    # a clone-like copy: `prefect deploy` records its folder as the worker's working directory (nothing in the worktree)
    root = copy_project(base / "project")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, api)
    processes = []
    try:
        server_log = base / "server.log"
        server = start_logged([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, base,
                              server_log)
        processes.append(server)
        start = time.monotonic()
        wait_for_health(server, api, server_log)
        print(f"prefect server up in {time.monotonic() - start:.0f} s")
        prefect_cli(["work-pool", "create", POOL, "--type", "process"], env, root)
        deployed = prefect_cli(["deploy", "--all"], env, root)
        assert f"Deployment '{SWEEP}' successfully created" in deployed, deployed
        worker_log = base / "worker.log"
        worker = start_logged([PREFECT, "worker", "start", "--pool", POOL], env, root, worker_log)
        processes.append(worker)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            _wait_until_ready(worker, worker_log)
            yield {"root": root, "env": env, "worker_log": worker_log}
    finally:
        for process in reversed(processes):  # the worker (and any flow run it started) first, then the server
            assert stop_tree(process) == [], "a process of the test outlived SIGKILL"


def _wait_until_ready(worker, log, timeout: float = 180) -> None:
    """Until the worker's heartbeat makes the pool READY (bounded)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"prefect worker exited: {log.read_text()[-3000:]}"
        with get_client(sync_client=True) as client:
            if client.read_work_pool(POOL).status.value == "READY":
                return
        time.sleep(2)
    raise AssertionError(f"work pool {POOL} not READY within {timeout:.0f} s: {log.read_text()[-3000:]}")


def _trigger(pool, deployment: str, overrides: list[str]) -> str:
    """``prefect deployment run <deployment> -p overrides=[...]``: the new flow run's id."""
    out = prefect_cli(["deployment", "run", deployment, "-p", f"overrides={json.dumps(overrides)}"], pool["env"],
                      pool["root"], timeout=120)
    return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)


def _wait(pool, flow_run_id: str, timeout: float = 1800):
    """The flow run once its state is terminal (bounded: the tiny pipeline takes ~5 min on 2 busy cores)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.type.value in TERMINAL:
            return run
        time.sleep(5)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout:.0f} s (state {run.state_name}); "
                         f"worker log: {pool['worker_log'].read_text()[-3000:]}")


def _children(client, flow_run_id: str) -> list[str]:
    """The flow run and its subflow runs (evaluate-benchmarks)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    return [flow_run_id, *(str(child.id) for child in children)]


def _artifacts(flow_run_id: str) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found}


def _log_lines(flow_run_id: str, after: datetime | None = None, until: str | None = None,
               timeout: float = 60) -> list[str]:
    """Every log message of the flow run and its subflows (from ``after`` on); with ``until``, waits (bounded)
    for a message containing it: Prefect ships log records in batches."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=_children(client, flow_run_id)),
                               timestamp=LogFilterTimestamp(after_=after) if after else None)
            lines: list[str] = []
            while True:  # pages of 200 (the API's default limit)
                batch = client.read_logs(wanted, limit=200, offset=len(lines))
                lines += [log.message for log in batch]
                if len(batch) < 200:
                    break
        if until is None or any(until in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(2)


def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=_children(client,
                                                                                                      flow_run_id))))
    return {run.name: run.state.type.value for run in runs}


def test_a_triggered_run_completes_with_its_artifacts_and_the_nightly_waits_for_its_schedule(pool):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    root = pool["root"]
    params_before = (root / "params.yaml").read_text()
    start = time.monotonic()
    flow_run_id = _trigger(pool, SWEEP, TINY_FULL)
    run = _wait(pool, flow_run_id)
    print(f"tiny pipeline on the work pool: {time.monotonic() - start:.0f} s")
    assert run.state.type.value == "COMPLETED", f"{run.state.message}\n{pool['worker_log'].read_text()[-3000:]}"
    assert run.work_pool_name == POOL and run.infrastructure_pid  # run by the worker, in a process of its own
    assert run.parameters["overrides"] == TINY_FULL  # the parameters went through the API unchanged

    artifacts = _artifacts(flow_run_id)
    assert {"tcl-benchmarks", "tcl-report", "tcl-mlflow-run"} <= set(artifacts), sorted(artifacts)
    assert artifacts["tcl-benchmarks"].type == "table" and artifacts["tcl-report"].type == "markdown"
    table = json.loads(artifacts["tcl-benchmarks"].data)
    assert [row["benchmark"] for row in table] == ["synthetic_voc", "synthetic_coco_object", "mean (2)"]
    assert "synthetic_coco_object" in artifacts["tcl-report"].data
    mlflow_run_id = re.search(r"/runs/([0-9a-f]{32})", artifacts["tcl-mlflow-run"].data).group(1)
    parent = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(mlflow_run_id)  # the flow run's MLflow run
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == flow_run_id
    assert (root / "params.yaml").read_text() == params_before  # the overrides held for that run only

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name(NIGHTLY)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
    now = datetime.now(UTC)
    assert runs, "the scheduler created no run of the nightly deployment"
    for scheduled in runs:  # waiting for 03:00 UTC, none picked up by the worker
        assert scheduled.state.type.value == "SCHEDULED", (scheduled.name, scheduled.state)
        when = scheduled.expected_start_time
        assert when > now and (when.hour, when.minute) == (3, 0), when
    assert nightly.schedules[0].schedule.cron == "0 3 * * *" and nightly.work_pool_name == POOL


def test_a_failing_stage_fails_the_flow_run_and_a_retry_resumes_after_the_cause_is_removed(pool):
    root = pool["root"]
    report = root / "stages/report.py"
    good = report.read_text()
    # the cause: a bug in the report stage (exit status 1); the threshold candidates changed so that
    # train, evaluate and the baseline (all three sweep them) run before it: what the retry must not run again
    report.write_text(good.replace("from __future__ import annotations\n",
                                   "from __future__ import annotations\nraise SystemExit('report: injected bug')\n", 1))
    overrides = [o for o in TINY_FULL if not o.startswith("evaluate.bg_thresh_candidates=")]
    overrides.append("evaluate.bg_thresh_candidates=[0.4, 0.5, 0.6]")
    params_before = (root / "params.yaml").read_text()
    flow_run_id = _trigger(pool, SWEEP, overrides)
    failed = _wait(pool, flow_run_id)
    assert failed.state.type.value == "FAILED", failed.state
    assert "report" in failed.state.message, failed.state.message
    states = _task_states(flow_run_id)
    assert states["report"] == "FAILED" and "register" not in states, states
    assert states["evaluate"] == states["train"] == "COMPLETED", states
    first = _log_lines(flow_run_id, until="report: injected bug")
    assert "report: injected bug" in first
    ran_before = {stage for stage in ("evaluate", "baseline@maskclip", "train") if f"Running stage '{stage}':" in first}
    assert ran_before == {"evaluate", "baseline@maskclip", "train"}, first[-40:]
    assert (root / "params.yaml").read_text() == params_before  # put back after the failed run too

    report.write_text(good)  # the bug fixed
    retry_at = datetime.now(UTC)
    start = time.monotonic()
    out = prefect_cli(["flow-run", "retry", flow_run_id], pool["env"], root, timeout=120)
    assert "scheduled for retry" in out, out
    retried = _wait(pool, flow_run_id)
    print(f"retry of the failed flow run: {time.monotonic() - start:.0f} s")
    assert retried.state.type.value == "COMPLETED", retried.state.message
    assert retried.run_count == 2  # the same flow run, run again by the worker
    again = _log_lines(flow_run_id, after=retry_at, until="Running stage 'report':")
    for stage in ran_before:  # DVC: done before the failure, not run again
        assert f"Stage '{stage}' didn't change, skipping" in again and f"Running stage '{stage}':" not in again, stage
    assert "Running stage 'report':" in again
    table = json.loads(_artifacts(flow_run_id)["tcl-benchmarks"].data)  # published by the retry
    assert [row["benchmark"] for row in table] == ["synthetic_voc", "synthetic_coco_object", "mean (2)"]
