"""RunTracker against the embedded SQLite store: everything logged can be read back with MlflowClient."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from tcl.tracking import PARENT_RUN_ENV, RunTracker, TrackingWarning, default_tracking_uri, register_model


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder whose embedded store (mlflow.db + mlartifacts/) is created once for the module."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text("{}\n")
    return root


@pytest.fixture()
def store(project, monkeypatch):
    monkeypatch.chdir(project)  # nothing may land in the cwd's ./mlruns
    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    from mlflow.tracking import MlflowClient

    return MlflowClient(default_tracking_uri(project))


def test_run_params_metrics_image_artifacts_tags_child(store, project, tmp_path):
    ckpt = tmp_path / "latest.pt"
    ckpt.write_bytes(b"step-10")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RunTracker.start("train", tags={"purpose": "test"}, stage="train") as run:  # default store
            assert run.healthy and run.tracking_uri == default_tracking_uri(project)
            run.log_params({"model": {"tcl_w": 0.1, "decoder": [64, 32]}, "train": {"lr": 1e-3}})
            for step in range(5):
                run.log_metrics({"loss/total": 1.0 / (step + 1), "grad_norm": np.float32(2.0), "note": "x"},
                                step=step)
            run.log_image(Image.new("RGB", (8, 8), (255, 0, 0)), "viz/overlay_0.png")
            run.log_image(np.zeros((8, 8, 3), np.uint8), "viz/labels_0.png")
            run.log_dict({"miou": 0.5, "classes": ["cat"]}, "eval/voc.json")
            run.log_artifact(ckpt, "checkpoints")
            (tmp_path / "next.pt").write_bytes(b"step-20")  # replaced atomically, then deleted, before the upload
            os.replace(tmp_path / "next.pt", ckpt)
            ckpt.unlink()
            run.set_tags({"best.step": 3})
            with run.child("eval-voc") as child:
                child.log_metrics({"miou": 0.42})
    assert [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)] == \
        ["metric 'note' of run 'train' is not a number (str); skipped"]
    assert run.dropped == 0 and run.healthy

    got = store.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "train"
    assert got.data.params == {"model.tcl_w": "0.1", "model.decoder.0": "64", "model.decoder.1": "32",
                               "train.lr": "0.001"}
    assert [m.value for m in store.get_metric_history(run.run_id, "loss/total")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert [m.step for m in store.get_metric_history(run.run_id, "grad_norm")] == [0, 1, 2, 3, 4]
    tags = got.data.tags
    assert tags["purpose"] == "test" and tags["tcl.stage"] == "train" and tags["best.step"] == "3"
    artifacts = {a.path for d in ("viz", "eval", "checkpoints") for a in store.list_artifacts(run.run_id, d)}
    assert artifacts == {"viz/overlay_0.png", "viz/labels_0.png", "eval/voc.json", "checkpoints/latest.pt"}
    local = store.download_artifacts(run.run_id, "checkpoints/latest.pt", str(tmp_path))
    with open(local, "rb") as fh:
        assert fh.read() == b"step-10"  # the file as it was when log_artifact was called
    assert got.info.artifact_uri.startswith((project / "mlartifacts" / "tcl").as_uri())
    assert not (project / "mlruns").exists()

    kid = store.get_run(child.run_id)
    assert kid.data.tags["mlflow.parentRunId"] == run.run_id
    assert kid.info.experiment_id == got.info.experiment_id and kid.data.metrics == {"miou": 0.42}


def test_failed_run_parent_from_env_and_resume(store, monkeypatch):
    parent = RunTracker.start("pipeline", experiment="tcl-pipeline")
    monkeypatch.setenv(PARENT_RUN_ENV, parent.run_id)
    with pytest.raises(RuntimeError), RunTracker.start("stage") as stage:
        stage.log_params({"train": {"steps": 10}})
        stage.log_metrics({"loss": 1.0}, step=1)
        raise RuntimeError("training crashed")
    got = store.get_run(stage.run_id)
    assert got.info.status == "FAILED" and got.data.tags["mlflow.parentRunId"] == parent.run_id
    assert got.info.experiment_id == parent.experiment_id  # nested runs live in the parent's experiment

    resumed = RunTracker.start("stage", resume_run_id=stage.run_id)
    assert resumed.run_id == stage.run_id and store.get_run(stage.run_id).info.status == "RUNNING"
    resumed.log_metrics({"loss": 0.5}, step=2)
    with pytest.warns(TrackingWarning, match="another value, kept the old one: train.steps"):
        resumed.log_params({"train": {"steps": 20, "lr": 0.1, "seed": 0}})  # one changed value, two new ones
        resumed.finish()
    assert store.get_run(stage.run_id).data.params == {"train.steps": "10", "train.lr": "0.1", "train.seed": "0"}
    parent.finish()
    assert [m.step for m in store.get_metric_history(stage.run_id, "loss")] == [1, 2]
    assert store.get_run(stage.run_id).info.status == "FINISHED"
    assert store.get_run(parent.run_id).info.status == "FINISHED"
    assert parent.child_env() == {PARENT_RUN_ENV: parent.run_id, "MLFLOW_TRACKING_URI": parent.tracking_uri}


def test_disabled_tracker_is_a_no_op(tmp_path):
    run = RunTracker.start("rank1", enabled=False)
    assert run.run_id is None and not run.healthy and run.child_env() == {}
    run.log_params({"a": 1})
    run.log_metrics({"loss": 1.0})
    run.log_image(np.zeros((2, 2)), "x.png")
    run.log_artifact(tmp_path / "missing.pt")
    run.log_dict({}, "x.json")
    run.set_tags({"a": "b"})
    assert run.child("c").run_id is None and run.flush(0.1)
    run.finish()


def test_register_model_with_alias(store, tmp_path):
    model_dir = tmp_path / "tcl_model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("artifact_path: tcl_model\nflavors: {}\n")
    with RunTracker.start("train-final") as run:
        run.log_artifact(model_dir)  # as a folder, uploaded asynchronously; register_model flushes first
        assert register_model(run, "tcl_model", "tcl-tiny", alias="champion") == "1"
        assert register_model(run, "tcl_model", "tcl-tiny", alias="champion") == "2"
    version = store.get_model_version_by_alias("tcl-tiny", "champion")
    assert str(version.version) == "2" and version.run_id == run.run_id and version.source.endswith("/tcl_model")

    # an MLflow 3 logged model (what mlflow.pyfunc.log_model creates), by models:/ URI and by name
    logged = store.create_logged_model(run.experiment_id, name="segmenter", source_run_id=run.run_id)
    assert register_model(None, f"models:/{logged.model_id}", "tcl-seg", alias="staging") == "1"
    assert register_model(run.run_id, "segmenter", "tcl-seg", alias="staging") == "2"
    version = store.get_model_version_by_alias("tcl-seg", "staging")
    assert version.source == f"models:/{logged.model_id}" and version.run_id == run.run_id

    with pytest.warns(TrackingWarning, match="not registered"):
        assert register_model(run.run_id, "no_such_model", "tcl-tiny") is None
    with pytest.raises(ValueError, match="no MLflow model"):
        register_model(run.run_id, "no_such_model", "tcl-tiny", strict=True)


def test_paused_lets_a_child_forked_meanwhile_import_what_the_delivery_thread_was_importing(store, tmp_path,
                                                                                            monkeypatch):
    """A DataLoader forks its workers while the tracker's thread may be inside a first import (MLflow and
    PIL import lazily on the first image): the child inherits that module's lock, held by a thread it does
    not have, and its own import of the module waits forever (a validation hung this way). paused() lets
    the call in flight finish before the fork and starts no other until the caller is done."""
    (tmp_path / "slow_first_import.py").write_text("import time\n\ntime.sleep(1.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = RunTracker.start("forks")
    deliver = run._deliver

    def deliver_after_a_first_import(op):
        import slow_first_import  # noqa: F401  (one second inside the import, holding its module lock)

        deliver(op)

    run._deliver = deliver_after_a_first_import
    run.log_metrics({"x": 1.0}, step=0)
    time.sleep(0.3)  # the delivery thread is inside the import now
    with run.paused():
        run.log_metrics({"x": 2.0}, step=1)
        child = multiprocessing.get_context("fork").Process(target=importlib.import_module, args=("slow_first_import",))
        child.start()
        child.join(20)
        hung = child.is_alive()
        if hung:
            child.kill()
        time.sleep(0.3)
        during = [m.value for m in store.get_metric_history(run.run_id, "x")]
    run.finish()
    assert not hung and child.exitcode == 0
    assert during == [1.0]  # the call in flight finished; the one queued during the pause waited
    assert sorted(m.value for m in store.get_metric_history(run.run_id, "x")) == [1.0, 2.0]


def test_queue_bound_drops_and_counts(store):
    run = RunTracker.start("bounded", max_pending=2)
    started = time.perf_counter()
    for step in range(200):
        run.log_metrics({"x": float(step)}, step=step)
    assert time.perf_counter() - started < 1.0  # callers never wait for the store
    run.finish()
    logged = len(store.get_metric_history(run.run_id, "x"))
    assert logged + run.dropped == 200 and logged >= 1


def test_experiments_are_tagged_as_model_training(store):
    """MLflow 3's UI opens an experiment without ``mlflow.experimentKind`` in GenAI mode ("0 traces"):
    every experiment our runs go to carries the custom-model-development kind, old ones included."""
    from tcl.tracking.transport import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")
    with RunTracker.start("train", experiment="kind-new") as new:
        pass
    assert store.get_experiment(new.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    old = store.create_experiment("kind-old")  # made by an earlier version of the project: no kind tag
    assert EXPERIMENT_KIND_TAG not in store.get_experiment(old).tags
    with RunTracker.start("train", experiment="kind-old") as run:
        assert run.experiment_id == old
    assert store.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    chosen = store.create_experiment("kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    with RunTracker.start("train", experiment="kind-chosen"):
        pass
    assert store.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # the user's choice stays


def test_registry_failures_are_one_registry_error_and_the_alias_holder_score_is_read(store, tmp_path):
    """What the register stage relies on: MLflow's own exceptions become one RegistryError line (exit status 1),
    and the score tag of the version holding an alias is read back (None without alias, tag or number)."""
    from mlflow.exceptions import MlflowException

    from tcl.errors import TCLError
    from tcl.tracking import RegistryError, alias_holder_score, registry_errors

    with pytest.raises(RegistryError) as caught, registry_errors("registering best.pt as 'tcl-none'"):
        store.get_registered_model("tcl-none")  # a real MlflowException (RESOURCE_DOES_NOT_EXIST)
    assert isinstance(caught.value, TCLError) and caught.value.exit_status == 1
    assert isinstance(caught.value.__cause__, MlflowException)
    line = str(caught.value)
    assert line.startswith("registering best.pt as 'tcl-none' failed (MlflowException: ") and "\n" not in line
    assert len(line) <= len("registering best.pt as 'tcl-none' failed (MlflowException: )") + 300

    assert alias_holder_score(store, "tcl-none", "champion", "mean_miou") is None  # no such model
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("artifact_path: m\nflavors: {}\n")
    with RunTracker.start("scored") as run:
        run.log_artifact(model_dir)
        version = register_model(run, "m", "tcl-scored", alias=None)
    assert alias_holder_score(store, "tcl-scored", "champion", "mean_miou") is None  # no alias yet
    store.set_registered_model_alias("tcl-scored", "champion", version)
    assert alias_holder_score(store, "tcl-scored", "champion", "mean_miou") is None  # no tag
    store.set_model_version_tag("tcl-scored", version, "mean_miou", "not a number")
    assert alias_holder_score(store, "tcl-scored", "champion", "mean_miou") is None
    store.set_model_version_tag("tcl-scored", version, "mean_miou", "41.5")
    assert alias_holder_score(store, "tcl-scored", "champion", "mean_miou") == 41.5
