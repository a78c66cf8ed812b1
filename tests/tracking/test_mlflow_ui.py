"""The MLflow UI opens the project's experiment on its runs, in a real headless Chromium.

MLflow 3.17's UI shows an experiment in its GenAI view ("0 traces", a pop-up) unless the page's URL
asks for the model-training view; the experiment's ``mlflow.experimentKind`` tag (which the project
sets) does not change that on its own. So every link the project gives out (the Prefect link
artifact, ``make mlflow-ui``, the docs) is built by :func:`tcl.tracking.ui_url`. A real ``mlflow
server`` on 127.0.0.1 serves the UI; Chromium loads the pages and the test reads what they show.
Skipped where no Chromium binary exists.
"""

from __future__ import annotations

import time

import pytest

from tcl.tracking import RunTracker, ui_url
from tests.mlflow_server import MlflowServer
from tests.serving.chromium import Chromium, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary")


def _settled_text(browser: Chromium, url: str, settle: float = 12.0, timeout: float = 90.0) -> str:
    """The page's text once the single-page app has shown the experiment (its runs table or its traces view)."""
    browser.open(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = browser.evaluate("document.body ? document.body.innerText : ''")
        if "Run Name" in text or "Traces\n0" in text:
            break
        time.sleep(0.5)
    time.sleep(settle / 4)  # let the table fill in
    return browser.evaluate("document.body ? document.body.innerText : ''")


def test_the_project_links_open_the_experiment_on_its_runs(tmp_path, monkeypatch):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        with RunTracker.start("train-probe", experiment="tcl", root=tmp_path) as run:
            run.log_metrics({"loss": 1.0}, step=1)
        with Chromium(find_chromium(), tmp_path / "profile", width=1400, height=1000) as browser:
            linked = _settled_text(browser, ui_url(server.uri, run.experiment_id))
            bare = _settled_text(browser, f"{server.uri}/#/experiments/{run.experiment_id}")
            run_page = _settled_text(browser, ui_url(server.uri, run.experiment_id, run.run_id))
    finally:
        server.stop()

    # the model-training view: its navigation (Runs, Models, Model registry), not GenAI's (Observability, ...)
    for page in (linked, run_page):
        assert "Model registry" in page and "Observability" not in page, page[:1500]
    assert "Run Name" in linked and "train-probe" in linked, linked[:1500]
    assert "loss" in run_page and "train-probe" in run_page, run_page[:1500]
    # the control: the same experiment without the view in the URL opens on GenAI's traces, not on its runs
    assert "Observability" in bare and "Run Name" not in bare, bare[:1500]
