"""One MLflow parent run per pipeline execution, with the stages' runs nested under it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.parent_run import PipelineRun, benchmark_table
from tcl.tracking import PARENT_RUN_ENV, PER_RUN_TAGS, RUN_NAME_TAG, RunTracker

from .conftest import REPO, git, init_repo, run_python

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
    assert trains[-1].info.run_id == alone.run_id
    pipelines = client.search_runs([experiment], f"tags.{RUN_NAME_TAG} = 'pipeline'",
                                   order_by=["attributes.start_time"])
    assert [r.info.run_name for r in pipelines] == [f"pipeline · {commit} · steps=100",
                                                    f"pipeline · {commit} · steps=200",
                                                    "pipeline · three-steps · steps=3",
                                                    "pipeline · sedgy-pins"]  # the experiment's own parent
    assert [r.data.tags.get("mlflow.parentRunId") for r in trains] == [*parents, pipelines[-1].info.run_id]


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

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", PARENT_RUN_ENV, "DVC_EXP_NAME",
                 "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    assert not stage_run("prepare_clip").enabled  # by hand or in a test: no store is touched
    (tmp_path / "params.yaml").write_text("{}\n")
    with monkeypatch.context() as dvc_exp:  # a plain `dvc exp run`: under the experiment's parent run
        dvc_exp.setenv("DVC_EXP_NAME", "by-hand")
        dvc_exp.setenv("DVC_ROOT", str(tmp_path))
        with stage_run("prepare_clip") as in_experiment:
            assert in_experiment.enabled
    from tcl.tracking import default_tracking_uri

    tags = MlflowClient(default_tracking_uri(tmp_path)).get_run(in_experiment.run_id).data.tags
    assert tags.get("mlflow.parentRunId") and tags["dvc.exp_name"] == "by-hand"
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


def test_the_parent_run_has_the_tags_of_its_stage_runs(tmp_path, monkeypatch):
    """Whatever a stage's run says about the execution (commit, DVC experiment and root, Prefect flow run,
    label, overrides) the parent says too, with the same value, also when the pipeline is started from
    another folder (a Prefect worker, `--root`); only the tags that describe one stage differ."""
    from mlflow.tracking import MlflowClient

    from tcl.tracking import PREFECT_FLOW_RUN_ENV

    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME",
                 "DVC_EXP_BASELINE_REV", "DVC_STAGE", "TCL_STAGE", PREFECT_FLOW_RUN_ENV, "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "project"
    root.mkdir()
    _git_project(root)
    commit = git(root, "rev-parse", "HEAD").strip()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with PipelineRun.start(root, experiment="tags", kind="dvc exp run (e1)", overrides=["train.steps=9"],
                           flow_run_id="flow-1", exp_name="e1") as run:
        # what DVC and the flow give a stage process of `dvc exp run --name e1` (dvc/stage/run.py, queue/base.py)
        for key, value in {**run.env(), "DVC_ROOT": str(root), "DVC_STAGE": "train", "DVC_EXP_NAME": "e1",
                           "DVC_EXP_BASELINE_REV": commit}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(root)
        with RunTracker.start("train", stage="train") as stage:
            pass
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent, child = client.get_run(run.run_id).data.tags, client.get_run(stage.run_id).data.tags
    shared = {key: value for key, value in child.items() if key not in PER_RUN_TAGS}
    assert {"git.commit", "dvc.root", "dvc.exp_name", "dvc.exp_baseline_rev", "prefect.flow_run_id",
            "tcl.run_label", "pipeline.overrides"} <= set(shared)
    assert {key: parent.get(key) for key in shared} == shared
    assert parent["git.commit"] == commit and parent["pipeline.overrides"] == "train.steps=9"


STAGE_SCRIPT = """\
import sys
from pathlib import Path

from tcl.tracking import RunTracker

name, out = sys.argv[1], Path(sys.argv[2])
with RunTracker.start(name, stage=name, experiment="sweep") as run:  # what train and register do
    run.log_metrics({"done": 1.0})
out.write_text(" ".join(sys.argv[1:]))  # a new train output per sweep point: register runs again
"""

DVC_YAML = """\
stages:
  train:
    cmd: python stage.py train trained.txt ${train.steps}
    params: [train.steps]
    outs: [trained.txt]
  register:
    cmd: python stage.py register registered.txt
    deps: [trained.txt]
    outs: [registered.txt]
"""


@pytest.mark.slow  # two real `dvc exp run`s: ~60 s on 2 shared cores
def test_a_plain_dvc_exp_run_nests_its_stages_under_one_parent(tmp_path, monkeypatch):
    """A sweep by hand (`dvc exp run -S ...`, no `make run`): each experiment gets one parent run ``pipeline``,
    named and tagged like `make run`'s, holding the runs of all its stages (which run as separate processes),
    also for an experiment run in a temporary copy of the workspace (``--temp``, as queued ones are), whose
    runs go to the project's store (``DVC_ROOT``)."""
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME",
                 "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    root = init_repo(tmp_path / "project")
    (root / "params.yaml").write_text("train:\n  steps: 1\n  lr: 0.1\n")
    (root / "stage.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    env = {"PYTHONPATH": str(REPO)}
    for args in (["-n", "five-steps", "-S", "train.steps=5"], ["--temp", "-S", "train.steps=7"]):
        done = run_python(["-m", "dvc", "exp", "run", *args], cwd=root, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep").experiment_id
    parents = client.search_runs([experiment], f"tags.{RUN_NAME_TAG} = 'pipeline'", order_by=["attributes.start_time"])
    assert len(parents) == 2
    named = parents[0]
    assert named.info.run_name == "pipeline · five-steps · steps=5" and named.info.status == "FINISHED"
    assert named.data.tags["dvc.exp_name"] == "five-steps" and named.data.tags["pipeline.overrides"] == "train.steps=5"
    assert named.data.tags["pipeline.kind"] == "dvc exp run (five-steps)"
    random_name = parents[1].data.tags["dvc.exp_name"]  # DVC names an experiment run without --name
    assert parents[1].info.run_name == f"pipeline · {random_name} · steps=7"
    for parent in parents:
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                      order_by=["attributes.start_time"])
        assert [c.data.tags[RUN_NAME_TAG] for c in children] == ["train", "register"]
        assert [c.info.run_name for c in children] == [f"{name}{parent.info.run_name[len('pipeline'):]}"
                                                       for name in ("train", "register")]
        assert all(c.data.tags["pipeline.overrides"] == parent.data.tags["pipeline.overrides"] for c in children)
    everything = client.search_runs([experiment])
    assert len(everything) == 6  # two parents, two stages each: no parentless stage run


def test_stages_of_one_dvc_experiment_share_a_parent_and_a_new_execution_gets_its_own(tmp_path, monkeypatch):
    """The same without DVC (fast): stage runs started one after the other with the environment `dvc exp run`
    gives them find the parent the first one created; it is RUNNING while a stage runs and takes the stage's end
    status; the experiment's name used again (a failed experiment run again) opens a new parent."""
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    _git_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    baseline = git(tmp_path, "rev-parse", "HEAD").strip()
    (tmp_path / "params.yaml").write_text("train:\n  steps: 3\n")  # what `dvc exp run -S train.steps=3` writes
    for key, value in {"DVC_ROOT": str(tmp_path), "DVC_EXP_NAME": "three", "DVC_EXP_BASELINE_REV": baseline}.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = []
    for name in ("train", "register", "train"):
        monkeypatch.setenv("DVC_STAGE", name)
        try:
            with RunTracker.start(name, stage=name, experiment="exp") as run:
                parent = client.get_run(run.run_id).data.tags["mlflow.parentRunId"]
                assert client.get_run(parent).info.status == "RUNNING"
                if name == "register":
                    raise RuntimeError("registry down")
        except RuntimeError:
            pass
        runs.append((run.run_id, parent))
    (train, first), (register, same), (again, second) = runs
    assert first == same != second
    assert client.get_run(first).info.status == "FAILED"  # its last stage failed
    assert client.get_run(second).info.status == "FINISHED"
    parent = client.get_run(first)
    assert parent.info.run_name == "pipeline · three · steps=3" and parent.data.tags[RUN_NAME_TAG] == "pipeline"
    assert parent.data.tags["pipeline.overrides"] == "train.steps=3"
    assert parent.data.params == {"train.steps": "3"}  # the experiment's parameters, as make run's parent has them
    assert client.get_run(train).info.run_name == "train · three · steps=3"
    assert "mlflow.parentRunId" not in parent.data.tags
