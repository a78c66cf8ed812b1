"""Run tags, project root / default store, and value cleaning (no MLflow store involved)."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import numpy as np
import pytest
import torch

from tcl.tracking import default_tracking_uri, find_project_root, flatten_params, resolve_tracking_uri, run_tags
from tcl.tracking.transport import HTTP_LIMITS, artifact_location, http_limits, is_remote
from tcl.tracking.values import MAX_PARAM_VALUE_LENGTH, clean_key, metric_value

_ENV = ("TCL_STAGE", "DVC_STAGE", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "TCL_PREFECT_FLOW_RUN_ID",
        "PREFECT__FLOW_RUN_ID", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@dataclasses.dataclass(frozen=True)
class _Inner:
    w: float = 0.1
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class _Outer:
    model: _Inner = dataclasses.field(default_factory=_Inner)
    name: str | None = None


def test_flatten_params_dotted_keys_strings_and_limits():
    flat = flatten_params({"cfg": _Outer(), "empty": {}, "none": [], "bad key!": "x" * 7000, "p": {"a/b": True}})
    assert flat["cfg.model.w"] == "0.1"
    assert flat["cfg.model.sizes.0"] == "1" and flat["cfg.model.sizes.1"] == "2"
    assert flat["cfg.name"] == "None"
    assert flat["empty"] == "{}" and flat["none"] == "[]"
    assert len(flat["bad key_"]) == MAX_PARAM_VALUE_LENGTH and flat["bad key_"].endswith("...")
    assert flat["p.a/b"] == "True"
    assert all(isinstance(v, str) for v in flat.values())


def test_clean_key_and_metric_value():
    assert clean_key("loss/tcl") == "loss/tcl"
    assert clean_key("a//b/./../c/") == "a/b/__/c"
    assert clean_key("miou[voc]@448") == "miou_voc__448"
    assert len(clean_key("k" * 300)) == 250
    assert metric_value(torch.tensor(2.5)) == 2.5
    assert metric_value(np.float32(0.5)) == 0.5 and metric_value(3) == 3.0
    assert np.isnan(metric_value(float("nan")))
    assert metric_value("1.0") is None and metric_value([1, 2]) is None and metric_value(torch.ones(2)) is None


def test_project_root_and_default_store(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert find_project_root() == tmp_path
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri() == default_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000" and is_remote(resolve_tracking_uri())
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    # a queued `dvc exp run` runs in a temporary copy and points DVC_ROOT at the real repository
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "sub"))
    assert find_project_root() == tmp_path / "sub"
    assert artifact_location(f"sqlite:///{tmp_path}/mlflow.db", "tcl/ablation 1") == \
        (tmp_path / "mlartifacts" / "tcl_ablation_1").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "tcl") is None


def test_run_tags_from_git_dvc_and_prefect(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("a: 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "params.yaml"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", head)
    monkeypatch.setenv("TCL_PREFECT_FLOW_RUN_ID", "0f0f-flow")
    tags = run_tags()
    assert tags["git.commit"] == head == tags["mlflow.source.git.commit"]
    assert tags["git.dirty"] == "false"
    assert tags["tcl.stage"] == "train" and tags["dvc.stage"] == "train"
    assert tags["dvc.exp_name"] == "lr-sweep-1" and tags["dvc.exp_baseline_rev"] == head
    assert tags["prefect.flow_run_id"] == "0f0f-flow"
    (repo / "params.yaml").write_text("a: 2\n")
    assert run_tags(stage="evaluate")["git.dirty"] == "true"
    assert run_tags(stage="evaluate")["tcl.stage"] == "evaluate"  # explicit stage wins over the environment
    monkeypatch.delenv("TCL_PREFECT_FLOW_RUN_ID")
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "1a1a-flow")  # what a Prefect worker sets for a flow-run process
    assert run_tags()["prefect.flow_run_id"] == "1a1a-flow"


def test_run_tags_without_git_or_orchestrator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    tags = run_tags()
    assert not any(k.startswith(("git.", "dvc.", "prefect.", "tcl.")) for k in tags)


def test_http_limits_scoped_and_respect_user_settings(monkeypatch):
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    with http_limits():
        with http_limits():  # nested / concurrent users share one override
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
