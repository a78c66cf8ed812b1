"""stages/register.py on a real embedded MLflow store: a new version per run, the alias kept by the better score,
a store that cannot be reached is one line and exit 1 (rerun later), not a traceback, and the registered model
runs with the settings the pipeline evaluated it with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.register import main
from tests.inference.conftest import scene, write_tiny_checkpoint
from tests.serving.conftest import BG_RECORD, registered_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout
    for name in ("TCL_MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    checkpoint = write_tiny_checkpoint(tmp_path / "models")
    return tmp_path, checkpoint


def _register(tmp_path: Path, checkpoint: Path, score: float) -> list[str]:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"mean": {"miou": score}}))
    bg_thresh = tmp_path / "bg_thresh.json"
    bg_thresh.write_text(json.dumps(BG_RECORD))
    return ["--params", str(ROOT / "params.yaml"), "--checkpoint", str(checkpoint), "--report", str(report),
            "--bg-thresh", str(bg_thresh), "--out", str(tmp_path / "registered.json")]


def test_register_moves_the_alias_only_to_a_better_version(inputs, capsys):
    from mlflow.tracking import MlflowClient

    tmp_path, checkpoint = inputs
    assert main(_register(tmp_path, checkpoint, 40.0)) == 0
    first = json.loads((tmp_path / "registered.json").read_text())
    assert first["version"] == "1" and first["alias_moved"] and first["alias_holder_mean_miou"] is None
    assert main(_register(tmp_path, checkpoint, 30.0)) == 0
    second = json.loads((tmp_path / "registered.json").read_text())
    assert second["version"] == "2" and not second["alias_moved"] and second["alias_holder_mean_miou"] == 40.0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"version 2 (mean mIoU 30.0); alias {first['alias']!r} stays (its version scored 40.0)")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias(first["name"], first["alias"]).version) == "1"


def test_an_unreachable_store_is_one_line_and_exit_1(inputs, capsys, monkeypatch):
    tmp_path, checkpoint = inputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    with pytest.warns(UserWarning, match="unreachable"):
        assert main(_register(tmp_path, checkpoint, 40.0)) == 1
    assert capsys.readouterr().err.splitlines() == [
        "register: error: MLflow is not reachable (http://127.0.0.1:9): nothing registered; rerun this stage "
        "(dvc repro register) when it is"]
    assert not (tmp_path / "registered.json").exists()


def test_the_registered_model_runs_with_the_evaluated_settings(tmp_path, monkeypatch):
    """The served model predicts what the pipeline scored: params.yaml's evaluate section in the synthetic
    protocol's geometry (its benchmarks), the evaluate stage's threshold, sliding windows, unless a request
    says otherwise."""
    import mlflow
    import pandas as pd

    from tcl.config import load_params
    from tcl.inference import PredictOptions
    from tcl.serving import encode_image

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TCL_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registered_project(tmp_path)
    evaluate = load_params(ROOT / "params.yaml").evaluate
    geometry = evaluate.protocols.synthetic
    expected = PredictOptions(sliding=True, bg_thresh=BG_RECORD["best"], template=evaluate.template,
                              short_side=geometry.short_side, long_side=geometry.long_side, crop=geometry.crop,
                              stride=geometry.stride)
    assert expected.settings != PredictOptions().settings  # the defaults would predict something else

    model = mlflow.pyfunc.load_model("models:/tcl@champion")
    assert model.unwrap_python_model().predictor.options.settings == expected.settings
    assert model.unwrap_python_model().predictor.options.sliding
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params["bg_thresh"] == 0.55 and params["template"] == evaluate.template
    assert params["short_side"] == geometry.short_side and params["sliding"] is True
    stored = json.loads((Path(mlflow.artifacts.download_artifacts("models:/tcl@champion"))
                         / "artifacts" / "inference_settings.json").read_text())
    record = json.loads((tmp_path / "metrics" / "registered.json").read_text())["inference"]
    assert stored == record and record["settings"]["bg_thresh"] == 0.55 and record["protocol"] == "synthetic"

    # A threshold that separates the two: the recorded one gives more background than the defaults' 0.4.
    frame = pd.DataFrame({"image": [encode_image(scene(128, 128, seed=1))], "phrases": ["red disc, blue square"]})
    recorded = model.predict(frame)[0]["fractions"]
    overridden = model.predict(frame, params={"bg_thresh": 0.4})[0]["fractions"]
    assert recorded["background"] > overridden["background"]
