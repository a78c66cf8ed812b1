"""The Prefect flow against Prefect's test harness: stages through DVC, retries, failures, artifacts, MLflow.

The first tests use a scratch project whose dvc.yaml has the pipeline's stage names but trivial
commands (a download that fails once, a training that prints steps, evaluations that record when
they run), so that the orchestration is checked in seconds; the last one runs the real stages on a
tiny synthetic world.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from pipelines import dvc_cli
from pipelines.overrides import parse_overrides, write_overrides

from .conftest import REPO, TINY, copy_project, init_repo, run_python

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Fake stage commands. Each evaluation records its start and end, to check the concurrency limit.
EVAL = """import json, pathlib, sys, time
name = sys.argv[1]
pathlib.Path("times").mkdir(exist_ok=True)
start = time.time(); time.sleep(1.5)
pathlib.Path(f"times/{name}").write_text(f"{start} {time.time()}")
pathlib.Path("metrics/eval").mkdir(parents=True, exist_ok=True)
pathlib.Path(f"metrics/eval/{name}.json").write_text(json.dumps({"benchmark": name, "miou": 10.0 + len(name)}))
"""
REPORT = """import json, pathlib
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path("metrics/eval").glob("*.json"))]
out = pathlib.Path("metrics/report"); out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps({"rows": rows, "mean": {"miou": sum(r["miou"] for r in rows) / len(rows)}}))
(out / "report.md").write_text("| benchmark | mIoU |\\n")
"""
DVC_YAML = {"stages": {
    # data/synthetic stands for what the real synthetic stage makes (the flow checks for inputs no stage makes)
    "synthetic": {"cmd": "echo world > world.txt && mkdir -p data/synthetic && echo x > data/synthetic/x",
                  "outs": ["world.txt", "data/synthetic"]},
    "download": {"foreach": ["a", "b"], "do": {
        # fails on its first attempt (like a dropped connection), succeeds on the retry
        "cmd": "test -e attempted_${item} || { touch attempted_${item}; echo connection reset; exit 1; }; "
               "cp world.txt shards_${item}.txt",
        "deps": ["world.txt"], "outs": ["shards_${item}.txt"]}},
    "train": {"cmd": "echo step 1 of 2 && echo step 2 of 2 && test ${prepare_clip.steps} -ne 13 && "
                     "cat shards_a.txt shards_b.txt > model.txt",
              "deps": ["shards_a.txt", "shards_b.txt"], "params": ["prepare_clip.steps"], "outs": ["model.txt"]},
    # the trained model's evaluation and the baselines': one stage per model, mapped together
    "evaluate": {"cmd": "python eval.py x", "deps": ["model.txt", "eval.py"],
                 "outs": [{"metrics/eval/x.json": {"cache": False}}]},
    "baseline": {"foreach": ["y", "z"], "do": {
        "cmd": "python eval.py ${item}", "deps": ["model.txt", "eval.py"],
        "outs": [{"metrics/eval/${item}.json": {"cache": False}}]}},
    "report": {"cmd": "python report.py", "deps": ["metrics/eval", "report.py"],
               "metrics": [{"metrics/report/report.json": {"cache": False}}],
               "outs": [{"metrics/report/report.md": {"cache": False}}]},
}}


@pytest.fixture()
def scratch(tmp_path):
    root = init_repo(tmp_path / "scratch")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "eval.py").write_text(EVAL)
    (root / "report.py").write_text(REPORT)
    return root


def _flow_run(flow_run_id):
    """(task runs, log records, artifacts) of one flow run and its subflows, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id, *(child.id for child in children)]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return runs, logs, artifacts


def test_flow_runs_each_stage_through_dvc_with_retries_a_concurrency_limit_and_artifacts(scratch, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.flow import tcl_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = (scratch / "params.yaml").read_text()
    state = tcl_pipeline(project_root=str(scratch), eval_concurrency=2, download_retries=2, download_retry_delay=0.2,
                         overrides=["prepare_clip.steps=5"], return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    task_runs, logs, artifacts = _flow_run(state.state_details.flow_run_id)

    runs = {run.name: run for run in task_runs}
    assert {"synthetic", "download@a", "download@b", "train", "evaluate", "baseline@y", "baseline@z",
            "report"} <= set(runs)
    assert runs["download@a"].run_count == 2 and runs["download@b"].run_count == 2  # retried after the failure
    messages = [log.message for log in logs]
    assert "connection reset" in messages and "step 2 of 2" in messages  # stage output streamed to Prefect
    assert all(message.strip() for message in messages)  # DVC's blank lines around each stage are dropped

    spans = sorted(tuple(map(float, p.read_text().split())) for p in (scratch / "times").iterdir())
    at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert len(spans) == 3 and at_once <= 2

    lock = yaml.safe_load((scratch / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["prepare_clip.steps"] == 5  # the run used the override
    assert (scratch / "params.yaml").read_text() == before  # and did not leave it behind
    assert dvc_cli.stale_stages(scratch) == ["train"]  # so the next plain run trains the file's value again
    assert [row["benchmark"] for row in result["benchmarks"]] == ["x", "y", "z"]
    keys = {a.key: a for a in artifacts}
    assert keys["tcl-benchmarks"].type == "table" and keys["tcl-report"].type == "markdown"
    table = json.loads(keys["tcl-benchmarks"].data)
    assert [row["benchmark"] for row in table] == ["x", "y", "z", "mean"] and table[-1]["miou"] == 11.0
    assert f"#/experiments/1/runs/{result['mlflow_run_id']}" in keys["tcl-mlflow-run"].data  # a link artifact

    parent = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}").get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.kind"] == "prefect"
    assert parent.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert parent.data.metrics["x.miou"] == 11.0

    # An orchestrator SIGKILLed with prepare_clip.steps=13 written (the train command fails on 13) leaves it behind;
    # the next plain nightly restores params.yaml before reading it, trains the file's steps and says so.
    crash = ("import os, signal, sys; from pipelines.params_backup import overrides_applied\n"
             "with overrides_applied(sys.argv[1], [('prepare_clip.steps', 13)]):\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert run_python(["-c", crash, str(scratch)], REPO).returncode == -9
    assert yaml.safe_load((scratch / "params.yaml").read_text())["prepare_clip"]["steps"] == 13
    nightly = tcl_pipeline(project_root=str(scratch), return_state=True)
    assert nightly.is_completed(), nightly.message
    assert (scratch / "params.yaml").read_text() == before
    # the one after has nothing to do and records nothing
    lock = yaml.safe_load((scratch / "dvc.lock").read_text())
    default = yaml.safe_load(before)["prepare_clip"]["steps"]
    assert lock["stages"]["train"]["params"]["params.yaml"]["prepare_clip.steps"] == default != 5
    client = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}")
    second = client.get_run(nightly.result()["mlflow_run_id"])
    assert second.data.tags["pipeline.overrides"] == "(none)"
    parents = "tags.tcl.run_name = 'pipeline'"
    runs_before = client.search_runs(["1"], "", max_results=1000)
    idle = tcl_pipeline(project_root=str(scratch), return_state=True)
    assert idle.is_completed() and idle.result() == {"mlflow_run_id": None, "benchmarks": [], "up_to_date": True}
    assert len(client.search_runs(["1"], parents)) == 2  # no third parent run ...
    assert len(client.search_runs(["1"], "", max_results=1000)) == len(runs_before)  # ... nor any other run
    for _ in range(60):  # Prefect ships log records in batches: wait (bounded) for the run's line to arrive
        _, idle_logs, idle_artifacts = _flow_run(idle.state_details.flow_run_id)
        if any("up to date" in log.message for log in idle_logs):
            break
        time.sleep(0.5)
    assert idle_artifacts == [] and any("the pipeline is up to date" in log.message for log in idle_logs)


def test_a_failing_stage_fails_the_flow_and_bad_parameters_fail_before_any_stage(scratch, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.flow import tcl_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = tcl_pipeline(project_root=str(scratch), overrides=["prepare_clip.steps=-4"], return_state=True)
    assert state.is_failed() and "prepare_clip.steps: must be >= 1" in state.message
    assert not (scratch / "world.txt").exists() and not (scratch / "mlflow.db").exists()  # nothing ran

    (scratch / "attempted_a").touch()
    (scratch / "attempted_b").touch()
    state = tcl_pipeline(project_root=str(scratch), overrides=["prepare_clip.steps=13"], return_state=True)
    assert state.is_failed()  # the train command exits non-zero for 13
    task_runs, _, _ = _flow_run(state.state_details.flow_run_id)
    states = {run.name: run.state.type.value for run in task_runs}
    assert states["train"] == "FAILED" and states["download@a"] == "COMPLETED" and "report" not in states
    client = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}")
    [parent] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.tcl.run_name = 'pipeline'")
    assert parent.info.status == "FAILED"


def test_an_override_of_a_foreach_list_runs_the_stages_it_expands_to(scratch):
    """pipeline.baselines=[...] for one flow run: the run has the baseline@ stages of the overridden
    list, not those of the file (whose names dvc.yaml no longer has then)."""
    from pipelines.flow import tcl_pipeline

    # the scratch synthetic stage (it makes the inputs the flow checks for) and one foreach stage: fast
    baseline = {"foreach": "${pipeline.baselines}", "do": {"cmd": "echo ${item} > baseline_${item}.txt",
                                                            "outs": ["baseline_${item}.txt"]}}
    stages = {"synthetic": DVC_YAML["stages"]["synthetic"], "baseline": baseline}
    (scratch / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    assert yaml.safe_load((scratch / "params.yaml").read_text())["pipeline"]["baselines"] == ["step0", "maskclip"]
    state = tcl_pipeline(project_root=str(scratch), overrides=["pipeline.baselines=[maskclip]"], track=False,
                         return_state=True)
    assert state.is_completed(), state.message
    task_runs, _, _ = _flow_run(state.state_details.flow_run_id)
    stages_run = {run.name for run in task_runs} - {"evaluate-benchmarks-0"}  # (the subflow's own task run)
    assert stages_run == {"synthetic", "baseline@maskclip"}
    assert (scratch / "baseline_maskclip.txt").is_file() and not (scratch / "baseline_step0.txt").exists()


def test_missing_inputs_fail_the_flow_before_params_or_stages(scratch):
    """As make run: the paper setting on a machine without its data fails at once, naming what is missing."""
    from pipelines.flow import tcl_pipeline

    before = (scratch / "params.yaml").read_text()
    state = tcl_pipeline(project_root=str(scratch), overrides=["download.sources.synthetic.root=nowhere"],
                         track=False, return_state=True)
    assert state.is_failed() and "input(s) missing: download.sources.synthetic: nowhere/" in state.message
    assert (scratch / "params.yaml").read_text() == before and not (scratch / "world.txt").exists()


def test_the_flow_command_line_ends_a_tcl_error_in_one_line_and_exit_2(scratch, monkeypatch, capsys):
    """python -m pipelines.flow: bad parameters are one line before any flow run, an error inside the flow
    run (an unknown --until) ends in one line after Prefect's log of it, both exit 2 (a failing stage: exit 1);
    nothing ran."""
    from pipelines import flow

    monkeypatch.setattr(flow, "PROJECT_ROOT", scratch)
    assert flow.main(["-S", "prepare_clip.steps=-4", "--no-tracking"]) == 2
    assert capsys.readouterr().err.splitlines() == ["flow: error: prepare_clip.steps: must be >= 1, got -4"]
    assert flow.main(["--until", "nowhere", "--no-tracking"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "flow: error: until='nowhere' is not a stage of dvc.yaml (stages: synthetic, download, train,")
    assert not (scratch / "world.txt").exists() and not (scratch / "mlflow.db").exists()


def test_a_flow_run_takes_the_workspace_lock_of_make_run(scratch):
    """While another pipeline run holds the checkout, the flow fails before writing params.yaml or running a stage."""
    import os

    from pipelines.flow import tcl_pipeline
    from pipelines.lock import WorkspaceLock

    before = (scratch / "params.yaml").read_text()
    with WorkspaceLock.acquire(scratch, "python -m pipelines.run -S prepare_clip.steps=3"):
        state = tcl_pipeline(project_root=str(scratch), overrides=["prepare_clip.steps=5"], track=False,
                             return_state=True)
    assert state.is_failed() and f"PID {os.getpid()}," in state.message
    assert "command: python -m pipelines.run -S prepare_clip.steps=3" in state.message
    assert (scratch / "params.yaml").read_text() == before and not (scratch / "world.txt").exists()


def test_flow_on_the_real_stages_then_dvc_finds_nothing_to_do(tmp_path, monkeypatch):
    """synthetic → download@synthetic → convert_coco_object@synthetic, for real, on a tiny world."""
    from pipelines.flow import tcl_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_project(tmp_path / "project")
    write_overrides(root / "params.yaml", parse_overrides(TINY))  # the project's own parameters: they stay
    start = time.monotonic()
    state = tcl_pipeline(project_root=str(root), until="convert_coco_object", return_state=True)
    assert state.is_completed(), state.message
    print(f"flow up to convert_coco_object: {time.monotonic() - start:.1f} s")
    assert len(list((root / "data/synthetic/shards").glob("synthetic-*.tar"))) == 3  # 48 pairs, 16 per shard
    assert len(list((root / "data/synthetic/coco_object/annotations/val2017").glob("*.png"))) == 3
    stats = json.loads((root / "metrics/download/synthetic.json").read_text())
    assert stats["samples_succeeded"] == 48

    done = run_python(["-m", "pipelines.run", "convert_coco_object@synthetic"], root)
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    bad = run_python(["-m", "pipelines.run", "-S", "download.sources.synthetic.threads=0"], root)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "run: error: download.sources.synthetic.threads: must be >= 1, got 0"]


def test_serve_module_builds_a_cron_deployment(monkeypatch):
    """``python -m pipelines.serve`` hands flow.serve a cron schedule (serving itself blocks: not run here)."""
    from pipelines import serve
    from pipelines.flow import tcl_pipeline

    seen = {}
    monkeypatch.setattr(type(tcl_pipeline), "serve", lambda self, **kwargs: seen.update(kwargs))
    assert serve.main(["--cron", "30 2 * * 1", "-S", "train.steps=10"]) == 0
    assert seen["name"] == "nightly" and seen["limit"] == 1
    assert seen["schedules"][0].cron == "30 2 * * 1" and seen["parameters"]["overrides"] == ["train.steps=10"]


def test_serve_refuses_bad_overrides_in_one_line_before_serving(monkeypatch, capsys):
    from pipelines import serve
    from pipelines.flow import tcl_pipeline

    served = []
    monkeypatch.setattr(type(tcl_pipeline), "serve", lambda self, **kwargs: served.append(kwargs))
    assert serve.main(["-S", "train.steps=0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["serve: error: train.steps: must be >= 1, got 0"]
    assert served == []


def test_serve_refuses_a_name_that_prefect_yaml_deploys(monkeypatch, capsys):
    from pipelines import serve
    from pipelines.flow import tcl_pipeline

    served = []
    monkeypatch.setattr(type(tcl_pipeline), "serve", lambda self, **kwargs: served.append(kwargs))
    assert serve.main(["--name", "nightly-pool"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("serve: error: deployment name 'nightly-pool' is one of prefect.yaml's") and served == []


def test_prefect_yaml_deploys_the_flow_on_a_schedule(tmp_path):
    """`prefect deploy --all` with prefect.yaml against the harness's API: the deployment exists, scheduled."""
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "home")}
    pool = run_python(["-m", "prefect", "work-pool", "create", "tcl-local", "--type", "process"], REPO, env)
    assert pool.returncode == 0 or "already exists" in pool.stdout, pool.stdout + pool.stderr
    deployed = run_python(["-m", "prefect", "--no-prompt", "deploy", "--all"], REPO, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shown = run_python(["-m", "prefect", "deployment", "inspect", "tcl-pipeline/nightly-pool"], REPO, env)
    assert shown.returncode == 0 and "0 3 * * *" in shown.stdout, shown.stdout + shown.stderr
    # the served deployment's name is not one of them, so deploying never replaces it (nor serving, these)
    from pipelines.serve import pool_deployment_names

    assert "nightly" not in pool_deployment_names(REPO / "prefect.yaml") == ["nightly-pool", "steps-sweep-pool"]


def test_stages_are_grouped_in_dvc_order_with_evaluations_together():
    from pipelines.flow import stage_groups

    stages = ["synthetic", "download@cc3m", "download@cc12m", "convert_coco_object@coco", "prepare_clip", "train",
              "evaluate", "baseline@step0", "baseline@maskclip", "report", "register"]
    assert stage_groups(stages) == [
        ("synthetic", ["synthetic"]), ("download", ["download@cc3m", "download@cc12m"]),
        ("convert_coco_object", ["convert_coco_object@coco"]), ("prepare_clip", ["prepare_clip"]), ("train", ["train"]),
        ("evaluate", ["evaluate", "baseline@step0", "baseline@maskclip"]), ("report", ["report"]),
        ("register", ["register"])]
