"""Training logs to a real MLflow server, and keeps going when that server goes away mid-run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.mlflow_server import MlflowServer
from tests.train.conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[2]


def test_training_survives_the_tracking_server_going_away(tmp_path, tiny_clip_dir, tiny_shards):
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards, image_every=1))
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", str(params_file),
                   "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m")]
        process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        output = []
        for line in process.stdout:  # bounded: training ends after 6 steps
            output.append(line)
            if line.startswith("step 2/6"):
                server.stop()  # the server goes away mid-run
        assert process.wait(timeout=300) == 0, "".join(output)[-3000:]
        text = "".join(output)
        assert "step 6/6" in text and "train: done at step 6" in text
        assert "unreachable" in text.lower() or "tracking" in text.lower()  # one warning, not a crash
        with (tmp_path / "m" / "train_curve.csv").open() as handle:
            assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]
        assert json.loads((tmp_path / "m" / "train.json").read_text())["step"] == 6

        server.start()  # what reached the server before it went away is there
        client = MlflowClient(server.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1
        run = runs[0]
        assert run.data.params["train.steps"] == "6" and run.data.params["derived.global_batch"] == "4"
        assert run.data.tags.get("tcl.stage") == "train" and "git.commit" in run.data.tags
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")][:1] == [1]
    finally:
        server.stop()
