"""The MLflow pyfunc: logged to a SQLite store, registered with an alias, loaded, and served by
``mlflow models serve`` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from tcl.checkpoint import CheckpointError
from tcl.inference import PredictOptions, Predictor, load_inference_model
from tcl.serving import decode_label_map, encode_image, log_segmentation_model
from tests.inference.conftest import scene

OPTIONS = PredictOptions(short_side=64, max_pixels=200 * 200)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_checkpoint):
    """The model logged and registered as ``tcl-segmentation@champion`` in a fresh SQLite store."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    info = log_segmentation_model(tiny_checkpoint, options=OPTIONS, registered_name="tcl-segmentation",
                                  alias="champion", tracking_uri=uri)
    return uri, info


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return Predictor(load_inference_model(tiny_checkpoint), OPTIONS)


def test_registered_model_loads_and_segments(registered, reference, monkeypatch):
    uri, info = registered
    assert info["version"] == "1" and info["model_uri"] == "models:/tcl-segmentation@champion"
    run = mlflow.MlflowClient(uri).get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("file://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(info["model_uri"])
    assert {p.name for p in model.metadata.get_params_schema().params} >= {"bg_thresh", "background", "pamr", "kp_w"}

    images = [scene(seed=1), scene(80, 60, seed=2)]
    frame = pd.DataFrame({"image": [encode_image(images[0]), encode_image(images[1])],
                          "phrases": ["red disc, blue square", ["sky", "sea"]]})
    out = model.predict(frame)
    assert [o["classes"] for o in out] == [["background", "red disc", "blue square"], ["background", "sky", "sea"]]
    expected = reference.segment(images[0], "red disc, blue square")
    assert np.array_equal(out[0]["labels"], expected.labels) and out[0]["fractions"] == expected.fractions()
    assert out[1]["labels"].shape == (60, 80) and (out[1]["height"], out[1]["width"]) == (60, 80)

    png = model.predict(frame.iloc[:1], params={"background": False, "label_format": "png"})[0]
    assert png["classes"] == ["red disc", "blue square"]
    no_bg = reference.segment(images[0], "red disc, blue square", PredictOptions(short_side=64, bg_thresh=None))
    assert np.array_equal(decode_label_map(png["labels"]), no_bg.labels)

    # MLflow itself drops a parameter the signature does not declare (with a warning): the model refuses it.
    with pytest.raises(MlflowException, match=r"^unknown request parameter\(s\) bg_treshold, pamr_off; this model "
                                              r"accepts: background, bg_thresh, kp_w, label_format, pamr, short_side"):
        model.predict(frame.iloc[:1], params={"bg_treshold": 0.9, "pamr_off": True, "background": False})
    assert model.predict(frame.iloc[:1], params={"background": False})[0]["classes"] == ["red disc", "blue square"]
    # An option out of range is the caller's error (HTTP 400), named by the shared settings' own check.
    with pytest.raises(MlflowException, match=r"^kp_w: must be in \[0, 1\], got 2.0$") as err:
        model.predict(frame.iloc[:1], params={"kp_w": 2.0})
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"

    for frame, message in [
        (pd.DataFrame({"image": [encode_image(b"not an image")], "phrases": ["cat"]}), "row 0: not an image"),
        (pd.DataFrame({"image": ["%%%"], "phrases": ["cat"]}), "row 0: not valid base64"),
        (pd.DataFrame({"image": [encode_image(scene())], "phrases": [" , "]}), "row 0: no phrases given"),
        (pd.DataFrame({"image": [encode_image(scene(300, 200))], "phrases": ["cat"]}),
         r"row 0: image too large \(300x200 = 60000 pixels; the limit is 40000\)"),
    ]:
        with pytest.raises(MlflowException, match=message):
            model.predict(frame)


def test_a_checkpoint_that_does_not_fit_is_refused_before_logging(tmp_path):
    (tmp_path / "tcl.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="tcl.pth"):
        log_segmentation_model(tmp_path / "tcl.pth", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ~20 s on 2 shared cores (mostly the server's start-up); the only test of the JSON path through MLflow's server.
def test_mlflow_models_serve_segments_over_http(registered, reference, tmp_path):
    uri, info = registered
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           # mlflow starts `uvicorn` by name: the venv's bin folder must be on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", info["model_uri"],
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited: {(tmp_path / 'serve.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not answer /ping within 120 s"
                time.sleep(0.5)

        image = scene(seed=4)
        good = {"dataframe_records": [{"image": encode_image(image), "phrases": "red disc, blue square"}]}
        status, body = _post(f"{base}/invocations", good)
        assert status == 200
        (prediction,) = body["predictions"]
        assert prediction["classes"] == ["background", "red disc", "blue square"]
        expected = reference.segment(image, "red disc, blue square")
        assert np.array_equal(np.array(prediction["labels"]), expected.labels)

        bad = [({"image": encode_image(b"hello"), "phrases": "cat"}, "not an image"),
               ({"image": encode_image(image), "phrases": ""}, "no phrases given"),
               ({"image": encode_image(scene(300, 200)), "phrases": "cat"}, "image too large")]
        for record, message in bad:
            status, body = _post(f"{base}/invocations", {"dataframe_records": [record]})
            assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"]
        status, body = _post(f"{base}/invocations", {**good, "params": {"bg_treshold": 0.9}})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "unknown request parameter(s) bg_treshold; this model accepts: background, bg_thresh" in body["message"]
        # Still serving, with request parameters from the signature.
        status, body = _post(f"{base}/invocations", {**good, "params": {"background": False, "sliding": True}})
        assert status == 200 and body["predictions"][0]["classes"] == ["red disc", "blue square"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
