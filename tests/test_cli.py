from __future__ import annotations

import json

from tcl.cli import main


def test_demo_runs_offline_and_writes_its_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--short-side", "96"]) == 0
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
    assert err.startswith("tcl: error: weights file not found") and "\n" not in err
