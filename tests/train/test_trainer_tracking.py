"""Training logs to a real MLflow server, and keeps going when that server goes away mid-run; the run it
could not end is closed by the next start."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer
from tests.train.conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~75 s: a server start, training, finish() waiting 27 s for the gone server, a restart
def test_training_survives_the_tracking_server_going_away(tmp_path, tiny_clip_dir, tiny_shards):
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards, image_every=1, steps=8))
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", str(params_file),
                   "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m")]
        process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        output, client = [], MlflowClient(server.uri)
        for line in process.stdout:  # bounded: training ends after 8 steps
            output.append(line)
            if line.startswith("step 2/8"):  # the checkpoint of step 2 releases steps 1-2 to MLflow
                deadline = time.monotonic() + 60
                while len(_losses(client)) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                process.send_signal(signal.SIGSTOP)  # not a step further until the server is gone
                server.stop()
                process.send_signal(signal.SIGCONT)
        assert process.wait(timeout=300) == 0, "".join(output)[-3000:]
        text = "".join(output)
        assert "step 8/8" in text and "train: done at step 8" in text
        warned = [line for line in output if "TrackingWarning" in line]
        assert len(warned) == 1 and "went away" in warned[0]  # one warning, not a crash
        with (tmp_path / "m" / "train_curve.csv").open() as handle:
            assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 9))
        assert json.loads((tmp_path / "m" / "train.json").read_text())["step"] == 8

        server.start()  # what reached the server before it went away is there, each step once
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1
        run = runs[0]
        assert run.data.params["train.steps"] == "8" and run.data.params["derived.global_batch"] == "4"
        assert run.data.tags.get("tcl.stage") == "train" and "git.commit" in run.data.tags
        steps = [m.step for m in _losses(client)]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
        assert run.info.status == "RUNNING"  # the server was gone until the process ended

        from tcl.tracking import RunTracker  # the next run started in that experiment closes it

        RunTracker.start("next", tracking_uri=server.uri, experiment="tcl").finish()
        closed = client.get_run(run.info.run_id)
        assert closed.info.status == "FAILED" and "had ended" in closed.data.tags["tcl.closed_by"]
    finally:
        server.stop()


def _losses(client) -> list:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client.get_metric_history(runs[0].info.run_id, "train/loss") if runs else []
