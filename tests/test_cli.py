from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.cli import main
from tcl.data.url_lists import serve_directory
from tests.inference.conftest import scene, write_tiny_checkpoint
from tests.serving.conftest import registered_project

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tcl"))


def test_demo_runs_offline_and_writes_its_outputs(tmp_path, capsys):
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert main(["demo", "--params", str(params), "--out", str(tmp_path), "--short-side", "96"]) == 0
    assert "demo done" in capsys.readouterr().out
    fractions = json.loads((tmp_path / "demo_fractions.json").read_text())
    assert fractions["classes"] == ["background", "red circle", "blue square"]
    assert (tmp_path / "demo_overlay.png").stat().st_size > 0 and (tmp_path / "demo_labels.png").exists()


def test_predict_files_folders_and_urls(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "photos").mkdir()
    scene(seed=1).save(tmp_path / "photos" / "one.png")
    scene(80, 80, seed=2).convert("RGB").save(tmp_path / "photos" / "two.jpg")
    (tmp_path / "web").mkdir()
    scene(64, 48, seed=3).save(tmp_path / "web" / "remote.png")
    (tmp_path / "phrases.txt").write_text("red disc\nblue square\n")
    out = tmp_path / "out"
    with serve_directory(tmp_path / "web") as base:
        assert main(["predict", str(tmp_path / "photos"), f"{base}remote.png", "--phrases",
                     str(tmp_path / "phrases.txt"), "--checkpoint", str(tiny_checkpoint), "--short-side", "64",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\[1/3\] one \(96x72\): \d+\.\d\d s", printed)
    assert re.search(r"\[3/3\] remote \(64x48\): \d+\.\d\d s", printed)
    assert re.search(r"3 image\(s\), \d+\.\d\d s per image on average", printed)
    for stem, size in (("one", (96, 72)), ("two", (80, 80)), ("remote", (64, 48))):
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.size == size and np.asarray(labels).max() <= 2
        fractions = json.loads((out / f"{stem}_fractions.json").read_text())
        assert fractions["classes"] == ["background", "red disc", "blue square"]
        assert Image.open(out / f"{stem}_overlay.png").height > size[1]

    # `segment` is an alias; sliding windows and no background.
    assert main(["segment", str(tmp_path / "photos" / "one.png"), "--classes", "red disc, blue square",
                 "--checkpoint", str(tiny_checkpoint), "--short-side", "64", "--sliding", "--crop", "48",
                 "--stride", "24", "--no-background", "--no-pamr", "--out", str(out)]) == 0
    fractions = json.loads((out / "one_fractions.json").read_text())
    assert fractions["classes"] == ["red disc", "blue square"]

    # --precision: bf16 autocast (and auto) run and say so; the labels stay close to fp32's
    exact = np.asarray(Image.open(out / "one_labels.png"))
    for precision in ("bf16", "auto"):
        assert main(["predict", str(tmp_path / "photos" / "one.png"), "--phrases", "red disc, blue square",
                     "--checkpoint", str(tiny_checkpoint), "--short-side", "64", "--sliding", "--crop", "48",
                     "--stride", "24", "--no-background", "--no-pamr", "--precision", precision,
                     "--out", str(out)]) == 0
        assert f"; precision {precision} " in capsys.readouterr().out
        assert (np.asarray(Image.open(out / "one_labels.png")) == exact).mean() > 0.95


def test_bad_input_gives_one_line_errors(tmp_path, tiny_checkpoint, capsys):
    def error(*argv: str) -> str:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err

    (tmp_path / "not_an_image.png").write_text("hello")
    ckpt = ["--checkpoint", str(tiny_checkpoint)]
    assert error(str(tmp_path / "missing.jpg"), "--phrases", "cat", *ckpt) == \
        f"tcl: error: image not found: {tmp_path / 'missing.jpg'}"
    assert error(str(tmp_path / "not_an_image.png"), "--phrases", "cat", "--checkpoint", "absent.pth") == \
        f"tcl: error: cannot read {tmp_path / 'not_an_image.png'}: not an image file PIL can decode " \
        "(PNG, JPEG, ...)"
    scene().save(tmp_path / "ok.png")
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", "--checkpoint", str(tmp_path / "absent.pth")) == \
        f"tcl: error: checkpoint not found: {tmp_path / 'absent.pth'}"
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", *ckpt, "--max-pixels", "1000") == \
        f"tcl: error: {tmp_path / 'ok.png'}: image too large (96x72 = 6912 pixels; the limit is 1000)"
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", *ckpt, "--kp-w", "2") == \
        "tcl: error: kp_w: must be in [0, 1], got 2.0"
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", *ckpt, "--precision", "fp64") == \
        "tcl: error: precision: must be one of fp32, bf16, auto, got 'fp64'"
    # An output folder that cannot be made fails before the model loads (a file is in its way).
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", *ckpt, "--out", str(tmp_path / "ok.png" / "out")) == \
        f"tcl: error: cannot create output folder {tmp_path / 'ok.png' / 'out'}: {tmp_path / 'ok.png'} is a file, " \
        "not a folder"
    assert error(str(tmp_path / "ok.png"), "--phrases", "cat", "--checkpoint", str(tmp_path / "not_an_image.png")) \
        .startswith(f"tcl: error: {tmp_path / 'not_an_image.png'}: not a readable")
    # A checkpoint whose weights do not fit the model its parameters describe.
    payload = torch.load(write_tiny_checkpoint(tmp_path / "other", ie_freeze=1), weights_only=True)
    payload["params"] = {"model": {"ie_freeze": 2}}
    torch.save(payload, tmp_path / "mismatch.pt")
    err = error(str(tmp_path / "ok.png"), "--phrases", "cat", "--checkpoint", str(tmp_path / "mismatch.pt"))
    assert err.startswith(f"tcl: error: {tmp_path / 'mismatch.pt'} was trained with another model config")
    assert error("http://127.0.0.1:9/photo.png", "--phrases", "cat", *ckpt, "--timeout", "5") \
        .startswith("tcl: error: cannot fetch http://127.0.0.1:9/photo.png")


def test_demo_reports_invalid_parameters(tmp_path, capsys):
    params = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("ie_freeze: 3", "ie_freeze: 4"))
    assert main(["demo", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "tcl: error: ie_freeze must be in 1..3 for a 4-block CLIP, got 4"
    (tmp_path / "params.yaml").write_text(params.replace("tv_w: 1.0", "tv_w: [1]"))
    assert main(["demo", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "tcl: error: model.tv_w: expected float, got list [1]"


def test_empty_phrase_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "x.png", "--phrases", " , ", "--checkpoint", "x.pth"])
    assert exit_info.value.code == 2
    assert "no phrases given" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: a registration, a subprocess, five model loads
def test_predict_uses_the_settings_recorded_for_the_project_checkpoint(tmp_path, monkeypatch, capsys):
    """In a project the pipeline has registered, `tcl predict` with no model named uses models/tcl/best.pt
    with the settings the register stage recorded for it (bg_thresh 0.55 of the evaluate stage, the synthetic
    geometry, simple templates, sliding windows) and says so; flags override them; a checkpoint that changed
    since it was registered gets the defaults, and a line saying why; --model runs the registered model."""
    project = tmp_path / "project"
    monkeypatch.delenv("TCL_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    registered_project(project)
    scene(128, 128, seed=1).save(tmp_path / "photo.png")
    phrases = ["--phrases", "red disc, blue square"]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "tcl.cli", "predict", str(tmp_path / "photo.png"), *phrases,
                           "--out", str(tmp_path / "recorded")], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[0]
    assert line.startswith("checkpoint models/tcl/best.pt (the project's, the default); settings: template simple, "
                           "bg_thresh 0.55, PAMR, kp_w 0.3, short side 96 (long <= 439), sliding 96-px windows "
                           "every 48 px (from ")
    assert "metrics/registered.json (tcl version 1, as the pipeline evaluated it))" in line

    def fractions(folder: str) -> dict:
        return json.loads((tmp_path / folder / "photo_fractions.json").read_text())["fractions"]

    monkeypatch.chdir(project)
    explicit = ["--bg-thresh", "0.55", "--template", "simple", "--short-side", "96", "--long-side", "439",
                "--sliding", "--crop", "96", "--stride", "48"]
    assert main(["predict", str(tmp_path / "photo.png"), *phrases, *explicit, "--out", str(tmp_path / "explicit")]) == 0
    assert fractions("recorded") == fractions("explicit")
    assert main(["predict", str(tmp_path / "photo.png"), *phrases, "--bg-thresh", "0.4",
                 "--out", str(tmp_path / "override")]) == 0
    assert "overridden: bg_thresh)" in capsys.readouterr().out
    assert fractions("override")["background"] < fractions("recorded")["background"]

    # serve-demo loads its model the same way: its page starts from the recorded settings.
    from tcl.cli import _load_predictor, build_parser
    from tcl.serving.demo_app import page_html

    page = page_html(_load_predictor(build_parser().parse_args(["serve-demo"])))
    assert 'id="bg_thresh" value="0.55"' in page and 'id="sliding" checked' in page
    assert "settings: template simple, bg_thresh 0.55" in capsys.readouterr().out

    # The workspace model replaced (as a dvc exp run does): not what was registered, so no recorded settings.
    write_tiny_checkpoint(tmp_path / "other", ie_freeze=1).replace(project / "models/tcl/best.pt")
    assert main(["predict", str(tmp_path / "photo.png"), *phrases, "--out", str(tmp_path / "changed")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "settings: template custom, bg_thresh 0.4" in line and "(from the defaults" in line
    assert "it changed since (a dvc exp run?); --model models:/tcl@champion serves the registered one)" in line

    assert main(["predict", str(tmp_path / "photo.png"), *phrases, "--model", "models:/tcl@champion",
                 "--out", str(tmp_path / "registered")]) == 0
    assert "model models:/tcl@champion; settings: template simple, bg_thresh 0.55" in capsys.readouterr().out
    assert fractions("registered") == fractions("recorded")


def test_no_model_or_an_unknown_registered_model_is_one_line(tmp_path, monkeypatch, capsys):
    """Outside a project with no model named, and with a registered model that does not exist: one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    scene().save(tmp_path / "ok.png")
    assert main(["predict", "ok.png", "--phrases", "cat"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tcl: error: no model given and no models/tcl/best.pt here: pass --checkpoint FILE (ours or tcl.pth) or "
        "--model models:/tcl@champion (a registered model)")
    assert main(["predict", "ok.png", "--phrases", "cat", "--model", "models:/tcl@champion"]) == 2
    printed = capsys.readouterr().err
    assert "Traceback" not in printed
    err = printed.strip().splitlines()[-1]  # (after MLflow's own log lines, creating the store)
    assert err.startswith(f"tcl: error: cannot load --model models:/tcl@champion from sqlite:///{tmp_path}/mlflow.db: ")
    assert err.endswith("(list the registered models in the MLflow UI, `make mlflow-ui`)")
    # --model names the store for its own call only: later MLflow calls in the process still follow the environment
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
