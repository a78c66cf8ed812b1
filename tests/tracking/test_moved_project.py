"""A project copied (``cp -a``) or moved (``mv``) with its embedded store reads and writes its own artifacts.

MLflow stores absolute artifact locations (``<checkout>/mlartifacts/...``): without ``relocate``, the
copy's runs write into the original's folder and, after a move, recreate the old folder.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tcl.tracking import PARENT_RUN_ENV, RunTracker, TrackingWarning, default_tracking_uri, register_model


def _files(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` with its modification time: what a write there would change."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _tracked_run(root: Path, monkeypatch, content: str) -> RunTracker:
    """What a stage does, from ``root``: a run with one artifact and one model folder, registered."""
    monkeypatch.chdir(root)
    (root / "out.txt").write_text(content)
    model = root / "model"
    model.mkdir(exist_ok=True)
    (model / "MLmodel").write_text(f"artifact_path: model\nflavors: {{}}\n# {content}\n")
    with RunTracker.start("train", experiment="tcl") as run:
        run.log_artifact(root / "out.txt", "outputs")
        run.log_artifact(model)
        assert register_model(run, "model", "tcl", alias="champion") is not None
    return run


def _read(root: Path, run_id: str, path: str, into: Path) -> str:
    from mlflow.tracking import MlflowClient

    local = MlflowClient(default_tracking_uri(root)).download_artifacts(run_id, path, str(into))
    return Path(local).read_text()


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)


def test_a_copied_then_moved_project_keeps_to_its_own_folder(tmp_path, monkeypatch, clean_env):
    from mlflow.tracking import MlflowClient

    original = tmp_path / "original"
    original.mkdir()
    (original / "params.yaml").write_text("{}\n")
    first = _tracked_run(original, monkeypatch, "first")

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True, timeout=60)
    before = _files(original)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _tracked_run(copy, monkeypatch, "second")
    assert _files(original) == before  # nothing written (nor rewritten) under the original
    assert any(issubclass(w.category, TrackingWarning) and f"created in {original}" in str(w.message)
               for w in caught)
    client = MlflowClient(default_tracking_uri(copy))
    for run in (first, second):  # the copy's runs, old and new, live in the copy
        assert client.get_run(run.run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/")
    champion = client.get_model_version_by_alias("tcl", "champion")
    assert str(champion.version) == "2" and champion.source.startswith((copy / "mlartifacts").as_uri() + "/")
    # the original keeps its own record: one version, in its own folder
    original_client = MlflowClient(default_tracking_uri(original))
    assert original_client.get_model_version_by_alias("tcl", "champion").version == 1
    assert original_client.get_run(first.run_id).info.artifact_uri.startswith((original / "mlartifacts").as_uri())

    moved = tmp_path / "moved"
    subprocess.run(["mv", str(copy), str(moved)], check=True, timeout=60)
    third = _tracked_run(moved, monkeypatch, "third")
    assert not copy.exists()  # the old place is not recreated
    assert _files(original) == before
    for run, content in ((first, "first"), (second, "second"), (third, "third")):
        assert _read(moved, run.run_id, "outputs/out.txt", tmp_path / f"read-{content}") == content
    import mlflow.artifacts

    model = mlflow.artifacts.download_artifacts("models:/tcl@champion", dst_path=str(tmp_path / "champion"),
                                                tracking_uri=default_tracking_uri(moved))
    assert "# third" in (Path(model) / "MLmodel").read_text()


def test_relocation_leaves_other_locations_and_a_fresh_store_alone(tmp_path, monkeypatch, clean_env):
    import sqlite3

    from tcl.tracking.relocate import main, relocate_store

    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text("{}\n")
    assert relocate_store(root / "mlflow.db") is None  # no store yet
    _tracked_run(root, monkeypatch, "x")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(root))
    elsewhere = (tmp_path / "my-artifacts").as_uri()
    client.create_experiment("user-chosen", artifact_location=elsewhere)
    assert relocate_store(root / "mlflow.db") is None  # in place: nothing to do

    moved = tmp_path / "moved"
    root.rename(moved)
    with sqlite3.connect(moved / "mlflow.db") as db:
        locations_before = dict(db.execute("SELECT name, artifact_location FROM experiments"))
    assert main([str(moved / "mlflow.db")]) == 0
    with sqlite3.connect(moved / "mlflow.db") as db:
        locations = dict(db.execute("SELECT name, artifact_location FROM experiments"))
    assert locations["tcl"] == (moved / "mlartifacts" / "tcl").as_uri()
    assert locations["user-chosen"] == elsewhere and locations["Default"] == locations_before["Default"]
    assert relocate_store(moved / "mlflow.db") is None  # done once
    bad = subprocess.run([sys.executable, "-m", "tcl.tracking.relocate", str(tmp_path / "none.db")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "none.db is not a file" in bad.stderr
