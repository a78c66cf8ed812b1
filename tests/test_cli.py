from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tcl.cli import main


def test_demo_runs_offline_and_writes_its_outputs(tmp_path, capsys):
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert main(["demo", "--params", str(params), "--out", str(tmp_path), "--short-side", "96"]) == 0
    assert "demo done" in capsys.readouterr().out
    fractions = json.loads((tmp_path / "demo_fractions.json").read_text())
    assert fractions["classes"] == ["background", "red circle", "blue square"]
    assert (tmp_path / "demo_overlay.png").stat().st_size > 0 and (tmp_path / "demo_labels.png").exists()


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    (tmp_path / "not_an_image.png").write_text("hello")
    assert main(["segment", str(tmp_path / "missing.jpg"), "--classes", "cat", "--checkpoint", "x.pth"]) == 2
    assert capsys.readouterr().err.strip() == f"tcl: error: image not found: {tmp_path / 'missing.jpg'}"
    assert main(["segment", str(tmp_path / "not_an_image.png"), "--classes", "cat",
                 "--checkpoint", str(tmp_path / "absent.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tcl: error: cannot read image {tmp_path / 'not_an_image.png'}") and "\n" not in err
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert main(["segment", str(tmp_path / "ok.png"), "--classes", "cat",
                 "--checkpoint", str(tmp_path / "absent.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tcl: error: weights file not found: {tmp_path / 'absent.pth'}"


def test_demo_reports_invalid_parameters(tmp_path, capsys):
    params = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("ie_freeze: 3", "ie_freeze: 4"))
    assert main(["demo", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "tcl: error: ie_freeze must be in 1..3 for a 4-block CLIP, got 4"
    (tmp_path / "params.yaml").write_text("model:\n  tv_w: [1]\n")
    assert main(["demo", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "tcl: error: model.tv_w: expected float, got list [1]"


def test_empty_class_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.png", "--classes", " , ", "--checkpoint", "x.pth"])
    assert exit_info.value.code == 2
    assert "no class names given" in capsys.readouterr().err
