"""RunTracker against a real ``mlflow server`` on 127.0.0.1: a short run, the server going away mid-run
(and coming back), and a server that is not there at start. Training must never notice."""

from __future__ import annotations

import time
import warnings

import pytest

from tcl.tracking import RunTracker, TrackingWarning
from tests.mlflow_server import MlflowServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _tracking_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]


def test_short_run_on_server(server, tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "best.pt").write_bytes(b"weights")
    with RunTracker.start("train", experiment="tcl-server", tracking_uri=server.uri) as run:
        assert run.healthy
        run.log_params({"train": {"lr": 0.001, "steps": 3}})
        for step in range(3):
            run.log_metrics({"loss": 3.0 - step, "samples_per_s": 100.0}, step=step)
        run.log_artifact(tmp_path / "best.pt", "checkpoints")
        run.log_dict({"miou": 0.5}, "eval/voc.json")
        child = run.child("eval-voc")
        child.log_metrics({"miou": 0.5})
        child.finish()
    client = MlflowClient(server.uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"train.lr": "0.001", "train.steps": "3"}
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [3.0, 2.0, 1.0]
    assert {a.path for a in client.list_artifacts(run.run_id, "checkpoints")} == {"checkpoints/best.pt"}
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == run.run_id
    assert (server.folder / "artifacts").is_dir()  # proxied through the server, not written by the client


def test_stages_of_a_dvc_experiment_nest_under_one_parent_on_a_server(server, monkeypatch):
    """The experiment's parent is found through the server's search as through the embedded store's."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("TCL_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "on-server")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)  # no such commit: the overrides are unknown
    runs = []
    for name in ("train", "register"):
        with RunTracker.start(name, stage=name, experiment="tcl-server-exp", tracking_uri=server.uri) as run:
            pass
        runs.append(run.run_id)
    client = MlflowClient(server.uri)
    parents = {client.get_run(run_id).data.tags["mlflow.parentRunId"] for run_id in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "pipeline · on-server" and parent.info.status == "FINISHED"
    assert parent.data.tags["pipeline.overrides"] == "(unknown)"


def test_server_goes_away_mid_run_and_comes_back(server):
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = RunTracker.start("train-outage", experiment="tcl-server", tracking_uri=server.uri, retry_interval=0.5)
        run.log_metrics({"loss": 0.0}, step=0)
        assert run.flush(30)
        server.stop()

        started = time.perf_counter()
        for step in range(1, 21):  # the training loop keeps logging while the server is gone
            run.log_metrics({"loss": float(step)}, step=step)
        run.log_params({"lr": 0.1})
        assert time.perf_counter() - started < 0.5
        deadline = time.monotonic() + 30
        while run.healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not run.healthy
        outage = _tracking_warnings(caught)
        assert len(outage) == 1 and "went away" in outage[0]

        server.start()  # same port and database: the tracker notices and replays its queue
        deadline = time.monotonic() + 60
        while not run.healthy and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.healthy and run.flush(30)
        history = MlflowClient(server.uri).get_metric_history(run.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(21)) and run.dropped == 0

        server.stop()  # gone for good: finish() must still return promptly
        run.log_metrics({"loss": 99.0}, step=21)
        started = time.perf_counter()
        run.finish(timeout=20)
        assert time.perf_counter() - started < 20
    assert run.dropped >= 1
    assert len(_tracking_warnings(caught)) == 3  # went away, reachable again, went away


def test_unreachable_server_at_start_disables_tracking():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        run = RunTracker.start("train", tracking_uri=f"http://127.0.0.1:{free_port()}")
        run.log_params({"a": 1})
        run.log_metrics({"loss": 1.0}, step=0)
        run.finish()
        assert time.perf_counter() - started < 10
    assert run.run_id is None and not run.healthy
    messages = _tracking_warnings(caught)
    assert len(messages) == 1 and "unreachable" in messages[0]
