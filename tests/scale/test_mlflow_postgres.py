"""Path 5 of the scale-out suite: the pipeline logging to an ``mlflow server`` whose backend store is PostgreSQL
and whose artifacts the server proxies.

A private PostgreSQL cluster (``initdb``/``pg_ctl`` on a free port, 127.0.0.1 only; see data_postgres.py for
running it as ``nobody`` when the tests run as root) holds MLflow's tables; ``mlflow server
--backend-store-uri postgresql://... --artifacts-destination <folder> --serve-artifacts`` serves them. Two
tiny pipeline runs (``python -m pipelines.run``, what ``make run`` runs, with ``MLFLOW_TRACKING_URI`` at the
server) log their parent and child runs, the checkpoint and the registered model with its alias there.
The MLflow client, knowing only the server's URL, then compares the two runs, downloads the checkpoint and
loads ``models:/tcl@champion`` to segment an image. Everything the test starts is stopped by PID.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mlflow_server import MlflowServer, free_port
from tests.pipelines.conftest import TINY, copy_project, run_python

from .data_postgres import PostgresCluster, postgres_bindir

#: The tiny pipeline of tests/pipelines/test_full_pipeline.py, with one benchmark.
TINY_RUN = TINY + [
    "train.steps=2", "train.ust_steps=1", "train.warmup_steps=1", "train.log_every=1", "train.image_every=0",
    "train.checkpoint_every=2", "train.val_every=0", "evaluate.num_workers=0", "evaluate.overlays=1",
    "evaluate.bg_thresh_candidates=[0.4, 0.5]", "evaluate.benchmarks=[synthetic_voc]",
    "pipeline.baselines=[maskclip]",
]

pytestmark = pytest.mark.skipif(postgres_bindir() is None, reason="PostgreSQL binaries missing: make scale-system")


def test_pipeline_runs_on_an_mlflow_server_with_postgresql(tmp_path, monkeypatch):
    import mlflow
    import psycopg2
    from mlflow.tracking import MlflowClient

    from pipelines.overrides import parse_overrides, write_overrides
    from tcl.serving import encode_image
    from tests.inference.conftest import scene

    timings: dict[str, float] = {}
    start = time.monotonic()
    database = PostgresCluster(free_port(), postgres_bindir())
    server = None
    try:
        db_uri = database.start("mlflow", "mlflow", "mlflow-test-password")
        (tmp_path / "server").mkdir()
        server = MlflowServer(tmp_path / "server", backend_store_uri=db_uri)
        server.start(wait_s=300)  # creates MLflow's tables in PostgreSQL first
        timings["postgres + mlflow server start"] = time.monotonic() - start

        root = copy_project(tmp_path / "project")
        write_overrides(root / "params.yaml", parse_overrides(TINY_RUN))
        env = {"MLFLOW_TRACKING_URI": server.uri}
        runs = []
        for label, args in (("first", []), ("second", ["-S", "train.steps=3"])):
            began = time.monotonic()
            done = run_python(["-m", "pipelines.run", *args], root, env=env, timeout=1800)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            timings[f"{label} pipeline run"] = time.monotonic() - began
            runs.append(done.stdout)
        assert not (root / "mlflow.db").exists()  # nothing went to the embedded store

        # --- the client knows the server's URL only
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("tcl")
        parents = client.search_runs([experiment.experiment_id], "tags.tcl.run_name = 'pipeline'",
                                     order_by=["attributes.start_time ASC"])
        assert len(parents) == 2 and [p.info.status for p in parents] == ["FINISHED", "FINISHED"]
        for parent, output in zip(parents, runs, strict=True):
            assert f"MLflow parent run {parent.info.run_id}" in output
        every = client.search_runs([experiment.experiment_id], "", max_results=1000)
        below: dict[str, list] = {}
        for run in every:
            below.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)

        def descendants(run_id: str) -> list:
            kids = below.get(run_id, [])
            return kids + [d for kid in kids for d in descendants(kid.info.run_id)]

        children = [descendants(parent.info.run_id) for parent in parents]
        names = [{run.data.tags["tcl.run_name"] for run in kids} for kids in children]
        assert {"download", "prepare_clip", "train", "eval-synthetic_voc", "register",
                "baseline-maskclip-synthetic_voc"} <= names[0], names[0]
        assert {"train", "eval-synthetic_voc", "register"} <= names[1], names[1]
        assert not names[1] & {"download", "prepare_clip"}, names[1]  # DVC re-ran only what train.steps changes
        assert len(every) == 2 + sum(len(kids) for kids in children)  # every run belongs to one pipeline run

        # comparing the two runs: their training length, and the benchmark number each parent received, which
        # the register stage compared to move the alias
        trains = [next(r for r in kids if r.data.tags["tcl.run_name"] == "train") for kids in children]
        last_steps = [client.get_metric_history(t.info.run_id, "train/loss")[-1].step for t in trains]
        assert last_steps[0] < last_steps[1], last_steps
        registered = json.loads((root / "metrics" / "registered.json").read_text())
        scores = [parent.data.metrics["mean.miou"] for parent in parents]
        assert scores == pytest.approx([registered["alias_holder_mean_miou"], registered["mean_miou"]], abs=0.01)

        # the checkpoint, through the server's artifact proxy, equals the one the second run wrote
        assert trains[1].info.artifact_uri.startswith("mlflow-artifacts:/"), trains[1].info.artifact_uri
        logged = next(a for a in client.list_artifacts(trains[1].info.run_id, "checkpoints") if a.path.endswith(".pt"))
        fetched = mlflow.artifacts.download_artifacts(f"runs:/{trains[1].info.run_id}/{logged.path}",
                                                      dst_path=str(tmp_path / "fetched"), tracking_uri=server.uri)
        local = root / "models" / "tcl" / logged.path.split("/")[-1]
        assert Path(fetched).read_bytes() == local.read_bytes()

        # the registered model: two versions, the alias on one of them, loaded by alias over HTTP
        versions = client.search_model_versions("name = 'tcl'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        champion = client.get_model_version_by_alias("tcl", "champion")
        assert champion.version == (registered["version"] if registered["alias_moved"] else "1")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # what load_model reads; no global state set
        began = time.monotonic()
        (tmp_path / "model").mkdir()
        model = mlflow.pyfunc.load_model("models:/tcl@champion", dst_path=str(tmp_path / "model"))
        import pandas as pd

        frame = pd.DataFrame({"image": [encode_image(scene(48, 40))], "phrases": ["red disc, blue square"]})
        out = model.predict(frame)
        assert out[0]["classes"] == ["background", "red disc", "blue square"]
        assert np.asarray(out[0]["labels"]).shape == (40, 48)
        timings["load by alias + predict"] = time.monotonic() - began

        # the runs are rows in PostgreSQL and the files under the server's artifact folder
        with psycopg2.connect(db_uri.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
            assert cur.fetchone()[0] == sum(len(kids) for kids in children) + 2
            cur.execute("SELECT version FROM model_versions WHERE name = 'tcl' ORDER BY version")
            assert [row[0] for row in cur.fetchall()] == [1, 2]
        assert list((tmp_path / "server" / "artifacts").rglob(logged.path.split("/")[-1]))
    finally:
        if server is not None:
            server.stop()
        database.stop()
        print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
