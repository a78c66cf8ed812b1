"""The aggregate table: registry order, means without training splits, baseline columns."""

from __future__ import annotations

import json

import pytest

from tcl.eval.report import ReportError, build_report, collect_baselines, collect_results, render_markdown


def result(name: str, miou: float | None, model: str = "best.pt") -> dict:
    return {"benchmark": name, "miou": miou, "aacc": 80.0, "num_images": 10, "images_per_s": 2.5,
            "settings": {"setting": "official", "pamr": True, "kp_w": 0.3, "bg_thresh": 0.4},
            "model": {"checkpoint": model}}


def write(folder, results):
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        (folder / f"{r['benchmark']}.json").write_text(json.dumps(r))


def test_rows_means_and_baselines(tmp_path):
    write(tmp_path / "eval", [result("voc20", 80.0), result("voc", 50.0), result("t_voc20", 99.0)])
    write(tmp_path / "baselines/step0", [result("voc", 20.0, "clip"), result("voc20", 40.0, "clip")])
    write(tmp_path / "baselines/maskclip", [result("voc", 10.0, "clip")])
    report = build_report(collect_results(tmp_path / "eval"), collect_baselines(tmp_path / "baselines"))
    assert [row["benchmark"] for row in report["rows"]] == ["voc", "voc20", "t_voc20"]
    assert report["mean"] == {"miou": 65.0, "aacc": 80.0, "miou_maskclip": 10.0, "miou_step0": 30.0,
                              "benchmarks": ["voc", "voc20"], "precision": None, "precision_maskclip": None,
                              "precision_step0": None}  # (these files predate the precision field)
    assert report["rows"][1]["miou_maskclip"] is None and report["rows"][1]["miou_step0"] == 40.0
    assert report["by_benchmark"]["voc"] == {"miou": 50.0, "miou_maskclip": 10.0, "miou_step0": 20.0}
    markdown = render_markdown(report)
    assert "| benchmark | mIoU | maskclip mIoU | step0 mIoU | aAcc |" in markdown
    assert "| voc20 | 80.00 | – | 40.00 | 80.00 |" in markdown
    assert "| **mean** (2) | **65.00** | 10.00 | 30.00 | 80.00 " in markdown
    assert "t_voc20 (train split)" in markdown and 'Model: `{"checkpoint": "best.pt"}`' in markdown


def with_precision(r: dict, precision: str) -> dict:
    return {**r, "precision": precision, "windows_per_s": 5.0, "device": "cpu"}


def test_one_precision_for_every_number_is_a_note(tmp_path):
    write(tmp_path / "eval", [with_precision(result("voc", 50.0), "fp32"),
                              with_precision(result("voc20", 80.0), "fp32")])
    write(tmp_path / "baselines/step0", [with_precision(result("voc", 20.0, "clip"), "fp32")])
    report = build_report(collect_results(tmp_path / "eval"), collect_baselines(tmp_path / "baselines"))
    assert report["precisions"] == ["fp32"] and report["mean"]["precision"] == "fp32"
    assert [(row["precision"], row["precision_step0"]) for row in report["rows"]] == [("fp32", "fp32"), ("fp32", None)]
    markdown = render_markdown(report)
    assert "| images/s | windows/s | precision |" in markdown
    assert "| voc | 50.00 | 20.00 | 80.00 | 10 | 2.50 | 5.00 | fp32 | official |" in markdown
    assert "Precision: every number above was computed in fp32." in markdown and "Warning" not in markdown


def test_mixed_precisions_are_shown_for_every_number(tmp_path):
    """A bf16 row, and a baseline computed in another precision than its row's, say so where the number is."""
    write(tmp_path / "eval", [with_precision(result("voc", 50.0), "bf16"),
                              with_precision(result("voc20", 80.0), "fp32")])
    write(tmp_path / "baselines/step0", [with_precision(result("voc", 20.0, "clip"), "fp32"),
                                         with_precision(result("voc20", 40.0, "clip"), "fp32")])
    report = build_report(collect_results(tmp_path / "eval"), collect_baselines(tmp_path / "baselines"))
    assert report["precisions"] == ["bf16", "fp32"]
    assert report["mean"]["precision"] == "mixed" and report["mean"]["precision_step0"] == "fp32"
    markdown = render_markdown(report)
    assert "| voc | 50.00 | 20.00 (fp32) | 80.00 | 10 | 2.50 | 5.00 | bf16 |" in markdown
    assert "| voc20 | 80.00 | 40.00 | 80.00 | 10 | 2.50 | 5.00 | fp32 |" in markdown
    assert "| **mean** (2) | **65.00** | 30.00 (fp32) | 80.00 | | | | mixed |" in markdown
    assert "the numbers come from bf16, fp32 runs" in markdown
    assert "Warning: a mean averages numbers computed in different precisions." in markdown


def test_bad_inputs(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        collect_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no evaluation results"):
        collect_results(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.json").write_text("{\"step\": 3}")
    with pytest.raises(ReportError, match="x.json: not an evaluation result"):
        collect_results(tmp_path / "bad")
    (tmp_path / "bad/x.json").write_text("{")
    with pytest.raises(ReportError, match="not readable JSON"):
        collect_results(tmp_path / "bad")
