"""One MLflow parent run per pipeline execution, with the stages' runs nested under it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.parent_run import PipelineRun, benchmark_table
from tcl.tracking import PARENT_RUN_ENV, RUN_NAME_TAG, RunTracker

REPORT = {"rows": [{"benchmark": "synthetic_voc", "miou": 41.5, "miou_step0": 12.0, "aacc": 80.0, "kp_w": 0.3,
                    "model": {"step": 9}},
                   {"benchmark": "synthetic_coco_stuff", "miou": 20.25, "miou_step0": None, "aacc": 61.0, "kp_w": 0.3,
                    "model": {"step": 9}}],
          "mean": {"miou": 30.88, "aacc": 70.5, "miou_step0": 12.0,
                   "benchmarks": ["synthetic_voc", "synthetic_coco_stuff"]},
          "baselines": ["step0"]}


def test_parent_run_hands_its_id_to_stages_and_collects_the_results(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    (tmp_path / "params.yaml").write_text("train:\n  steps: 9\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "metrics/report").mkdir(parents=True)
    (tmp_path / "metrics/report/report.json").write_text(json.dumps(REPORT))

    with PipelineRun.start(tmp_path, experiment="pipeline-test", kind="dvc repro", overrides=["train.steps=9"],
                           flow_run_id="flow-123") as run:
        env = run.env()
        assert env[PARENT_RUN_ENV] == run.run_id and env["MLFLOW_EXPERIMENT_NAME"] == "pipeline-test"
        assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # the project's own store
        with RunTracker.start("train", parent_run_id=env[PARENT_RUN_ENV], tracking_uri=env["MLFLOW_TRACKING_URI"]):
            pass  # what a stage process does with that environment
        metrics = run.record(tmp_path)
    assert metrics == {"mean.miou": 30.88, "mean.aacc": 70.5, "mean.miou_step0": 12.0, "synthetic_voc.miou": 41.5,
                       "synthetic_voc.miou_step0": 12.0, "synthetic_voc.aacc": 80.0, "synthetic_coco_stuff.miou": 20.25,
                       "synthetic_coco_stuff.aacc": 61.0}
    assert run.ui_url("http://127.0.0.1:5000").startswith("http://127.0.0.1:5000/#/experiments/")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent = client.get_run(run.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["mean.miou"] == 30.88
    assert parent.data.params["train.steps"] == "9"
    assert parent.data.tags["pipeline.kind"] == "dvc repro" and parent.data.tags["prefect.flow_run_id"] == "flow-123"
    assert parent.data.tags["pipeline.overrides"] == "train.steps=9"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert [c.data.tags[RUN_NAME_TAG] for c in children] == ["train"]
    assert parent.info.run_name.startswith("pipeline · ") and parent.info.run_name.endswith(" · steps=9")
    assert [c.info.run_name for c in children] == ["train" + parent.info.run_name[len("pipeline"):]]  # its label
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "pipeline")}
    assert artifacts == {"pipeline/params.yaml", "pipeline/dvc.lock"}
    assert {a.path for a in client.list_artifacts(run.run_id, "report")} == {"report/report.json"}


def _git_project(root: Path) -> str:
    """``root`` as a one-commit git repository; its short commit."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                              capture_output=True, text=True, timeout=60).stdout.strip()

    (root / "params.yaml").write_text("train:\n  steps: 9\n")
    git("init", "-q")
    git("add", "params.yaml")
    git("commit", "-q", "-m", "init")
    return git("rev-parse", "--short=7", "HEAD")


def test_run_names_tell_executions_apart(tmp_path, monkeypatch):
    """Three training losses overlaid in the MLflow UI must not all read "train": a run's name carries the
    DVC experiment (else the git commit) and the overrides of its pipeline execution; the plain name
    stays searchable as a tag."""
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "DVC_EXP_NAME", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    commit = _git_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    parents = []
    for steps, exp_name in ((100, None), (200, None), (3, "three-steps")):
        with PipelineRun.start(tmp_path, experiment="names", kind="test", overrides=[f"train.steps={steps}"],
                               exp_name=exp_name) as run:
            env = run.env()
            with RunTracker.start("train", parent_run_id=env[PARENT_RUN_ENV], tracking_uri=env["MLFLOW_TRACKING_URI"]):
                pass  # a stage process: it knows neither the overrides nor the experiment's name
        parents.append(run.run_id)
    monkeypatch.setenv("DVC_EXP_NAME", "sedgy-pins")  # `dvc exp run` by hand: DVC names the experiment
    with RunTracker.start("train", experiment="names", tracking_uri=env["MLFLOW_TRACKING_URI"]) as alone:
        pass

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("names").experiment_id
    trains = client.search_runs([experiment], f"tags.{RUN_NAME_TAG} = 'train'", order_by=["attributes.start_time"])
    assert [r.info.run_name for r in trains] == [f"train · {commit} · steps=100", f"train · {commit} · steps=200",
                                                 "train · three-steps · steps=3", "train · sedgy-pins"]
    assert [r.data.tags.get("mlflow.parentRunId") for r in trains] == [*parents, None]
    assert trains[-1].info.run_id == alone.run_id
    pipelines = client.search_runs([experiment], f"tags.{RUN_NAME_TAG} = 'pipeline'",
                                   order_by=["attributes.start_time"])
    assert [r.info.run_name for r in pipelines] == [f"pipeline · {commit} · steps=100",
                                                    f"pipeline · {commit} · steps=200",
                                                    "pipeline · three-steps · steps=3"]


def test_long_override_lists_are_summarised():
    from tcl.tracking import run_label

    overrides = ["train.steps=5", "model.tcl_w=0.5", "data.batch_size=8", "train.lr=1e-4", "eval.crop=448"]
    assert run_label({"git.commit": "0123456789abcdef"}, overrides) == \
        "0123456 · steps=5, tcl_w=0.5, batch_size=8, +2 more"
    assert run_label({}) == ""


def test_a_failed_execution_marks_the_parent_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        with PipelineRun.start(tmp_path, experiment="pipeline-test", kind="prefect") as run:
            raise RuntimeError("stage train failed")
    except RuntimeError:
        pass
    from mlflow.tracking import MlflowClient

    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run.run_id).info.status == "FAILED"


def test_benchmark_table_reads_rows_or_a_mapping():
    assert benchmark_table(REPORT)[0] == {"benchmark": "synthetic_voc", "miou": 41.5, "miou_step0": 12.0, "aacc": 80.0}
    assert benchmark_table({"benchmarks": {"voc": {"miou": 1.0}}}) == [{"benchmark": "voc", "miou": 1.0}]


@pytest.mark.slow  # the MLflow server needs 20-60 s to start on 2 shared cores
def test_mlflow_ui_serves_the_embedded_store_and_its_artifacts(tmp_path, monkeypatch):
    """What the README's `make mlflow-ui` does: the UI's server reads the runs and artifacts of mlflow.db."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("train:\n  steps: 9\n")
    with PipelineRun.start(tmp_path, experiment="tcl", kind="dvc repro") as run:
        run.record(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
            time.sleep(1)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        served = client.get_run(run.run_id)
        assert served.data.params["train.steps"] == "9" and served.data.tags["pipeline.kind"] == "dvc repro"
        local = client.download_artifacts(run.run_id, "pipeline/params.yaml", str(tmp_path / "fetched"))
        assert "steps: 9" in Path(local).read_text()
    finally:
        ui.terminate()
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait(timeout=30)


def test_stages_without_their_own_run_log_one_only_under_a_pipeline(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.parent_run import stage_run

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", PARENT_RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    assert not stage_run("prepare_clip").enabled  # by hand or in a test: no store is touched
    with PipelineRun.start(tmp_path, experiment="tcl", kind="dvc repro") as run:
        for key, value in run.env().items():
            monkeypatch.setenv(key, value)  # what a stage process launched by the pipeline sees
        with stage_run("prepare_clip") as child:
            child.log_metrics({"clip/loss": 1.5}, step=50)
    got = MlflowClient(run.env()["MLFLOW_TRACKING_URI"]).get_run(child.run_id)
    assert got.data.tags["mlflow.parentRunId"] == run.run_id and got.data.tags["tcl.stage"] == "prepare_clip"
    assert got.data.metrics["clip/loss"] == 1.5


def test_the_parent_run_logs_each_report_number_once(tmp_path, monkeypatch):
    """The report repeats every benchmark's mIoU (its table rows, and ``by_benchmark`` for `dvc metrics show`):
    the parent run gets each number under one key, one point per key, even when the outcome is recorded twice."""
    from mlflow.tracking import MlflowClient

    from tcl.eval.report import build_report

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    results = [{"benchmark": name, "miou": miou, "aacc": 70.0, "num_images": 3, "images_per_s": 1.5,
                "settings": {"setting": "simple", "bg_thresh": 0.55}, "model": {"step": 9}}
               for name, miou in (("synthetic_voc", 41.5), ("synthetic_coco_stuff", 20.25))]
    baselines = {"step0": [{**results[0], "miou": 12.0}]}
    report = build_report(results, baselines)
    assert report["by_benchmark"]["synthetic_voc"]["miou"] == 41.5  # the report's own repetition
    (tmp_path / "metrics/report").mkdir(parents=True)
    (tmp_path / "metrics/report/report.json").write_text(json.dumps(report))
    with PipelineRun.start(tmp_path, experiment="once", kind="dvc repro") as run:
        first = run.record(tmp_path)
        again = run.record(tmp_path)  # e.g. a flow that records once more after publishing
    assert again == {}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.get_run(run.run_id).data.metrics
    assert logged == first
    assert sorted(logged) == ["mean.aacc", "mean.miou", "mean.miou_step0", "synthetic_coco_stuff.aacc",
                              "synthetic_coco_stuff.miou",
                              "synthetic_coco_stuff.num_images", "synthetic_voc.aacc",
                              "synthetic_voc.miou", "synthetic_voc.miou_step0", "synthetic_voc.num_images"]
    assert all(len(client.get_metric_history(run.run_id, key)) == 1 for key in logged)
