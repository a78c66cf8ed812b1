"""The whole pipeline, every stage for real, on a tiny synthetic world: once through the Prefect flow,
then `make run` (nothing to do), then a `dvc exp run -S train.steps=...` experiment (slow: minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from pipelines import dvc_cli
from pipelines.overrides import parse_overrides, write_overrides

from .conftest import TINY, copy_project, run_python

#: TINY plus a few training steps and two benchmarks with one baseline each.
TINY_FULL = TINY + [
    "train.steps=2", "train.ust_steps=1", "train.warmup_steps=1", "train.log_every=1", "train.image_every=0",
    "train.checkpoint_every=2", "train.val_every=0", "evaluate.num_workers=0", "evaluate.overlays=1",
    "evaluate.bg_thresh_candidates=[0.4, 0.5]", "evaluate.benchmarks=[synthetic_voc, synthetic_coco_object]",
    "pipeline.baselines=[maskclip]",
]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_whole_pipeline_through_prefect_then_dvc_then_an_experiment(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.flow import tcl_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_project(tmp_path / "project")
    # the project's own parameters (a flow run's overrides would be undone after it, see pipelines.params_backup)
    write_overrides(root / "params.yaml", parse_overrides(TINY_FULL))
    start = time.monotonic()
    state = tcl_pipeline(project_root=str(root), return_state=True)
    assert state.is_completed(), state.message
    print(f"tiny pipeline through Prefect: {time.monotonic() - start:.0f} s")
    result = state.result()
    report = json.loads((root / "metrics/report/report.json").read_text())
    assert [row["benchmark"] for row in report["rows"]] == ["synthetic_voc", "synthetic_coco_object"]
    assert [row["benchmark"] for row in result["benchmarks"]] == ["synthetic_voc", "synthetic_coco_object"]
    for kind, bench in (("maskclip", "synthetic_voc"), ("maskclip", "synthetic_coco_object")):
        assert json.loads((root / f"metrics/baselines/{kind}/{bench}.json").read_text())["model"]["baseline"] == kind
    registered = json.loads((root / "metrics/registered.json").read_text())
    assert registered["version"] == "1" and registered["alias_moved"]

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(result["mlflow_run_id"])
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = {run.data.tags["tcl.run_name"] for run in children}
    assert {"train", "register", "baseline-maskclip-synthetic_voc",
            "baseline-maskclip-synthetic_coco_object"} <= names, names
    assert str(client.get_model_version_by_alias("tcl", "champion").version) == "1"

    done = run_python(["-m", "pipelines.run"], root)  # what `make run` runs: DVC finds nothing to do
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr

    swept = run_python(["-m", "pipelines.run", "--exp", "three-steps", "-S", "train.steps=3"], root, timeout=900)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    assert "three-steps" in _exp_show(root)  # a DVC experiment, comparable with dvc exp show
    assert json.loads((root / "metrics/train.json").read_text())["step"] == 3
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["steps"] == 2  # the override did not stay
    parents = client.search_runs([experiment], "tags.tcl.run_name = 'pipeline'")
    assert len(parents) == 2 and {p.data.tags["pipeline.kind"] for p in parents} == {"prefect",
                                                                                      "dvc exp run (three-steps)"}


def _exp_show(root) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root, capture_output=True,
                          text=True, env=dvc_cli.tool_env())
    assert done.returncode == 0, done.stderr
    return done.stdout
