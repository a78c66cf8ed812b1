"""benchmarks/pipeline_time.py: stage times come from the order of DVC's lines, the summary holds the
spread over repeats, and bad arguments are one line before anything is cloned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.benchmarks import load_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "pipeline_time.py"


def test_a_stage_runs_from_its_line_to_the_next_and_the_startup_comes_first():
    timing = load_benchmark("pipeline_time")
    lines = [(103.5, "run: dvc repro; MLflow parent run x"), (107.0, "Running stage 'synthetic':"),
             (120.0, "> python stages/synthetic.py"), (150.0, "Running stage 'download@synthetic':"),
             (151.0, "Stage 'x' didn't change, skipping"), (190.0, "Running stage 'report':")]
    assert timing.time_stages(lines, start=100.0, end=195.0) == {
        "startup": 7.0, "synthetic": 43.0, "download@synthetic": 40.0, "report": 5.0}
    assert timing.time_stages([], start=0.0, end=1.0) == {}


def test_the_summary_has_median_min_and_max_per_stage_and_leaves_failed_runs_out():
    timing = load_benchmark("pipeline_time")
    runs = [{"ok": True, "total": 600.0, "stages": {"startup": 5.0, "train": 100.0}},
            {"ok": True, "total": 640.0, "stages": {"startup": 7.0, "train": 120.0}},
            {"ok": True, "total": 610.0, "stages": {"startup": 6.0, "train": 90.0}},
            {"ok": False, "total": 20.0, "stages": {"startup": 1.0}}]
    rows = {row["stage"]: row for row in timing.summarize(runs)}
    assert list(rows) == ["startup", "train", "total"]
    assert rows["train"] == {"stage": "train", "median": 100.0, "min": 90.0, "max": 120.0, "n": 3}
    assert (rows["total"]["median"], rows["total"]["min"], rows["total"]["max"]) == (610.0, 600.0, 640.0)


def test_bad_arguments_are_one_line_and_nothing_is_cloned(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old").write_text("x")
    for args, message in [(["--repeats", "0"], "--repeats must be >= 1, got 0"),
                          (["--work", str(tmp_path / "used")], "is not empty: give a new folder"),
                          (["-S", "train.steps"], "-S 'train.steps': give KEY=VALUE")]:
        done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "t.json")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


def test_the_machine_speed_is_the_last_throughput_of_prepare_clip_only():
    timing = load_benchmark("pipeline_time")
    lines = [(0.0, "Running stage 'prepare_clip':"),
             (1.0, "step 50/300 loss 2.4 acc 0.2 lr 9.8e-04 74 samples/s eta 216 s"),
             (2.0, "step 300/300 loss 0.7 acc 0.7 lr 1.0e-05 75.5 samples/s eta 0 s"), (3.0, "Running stage 'train':"),
             (4.0, "step 10/40 | loss 1.4 | 51.9 samples/s | eta 0m3")]
    assert timing.clip_throughput(lines) == 75.5
    assert timing.clip_throughput(lines[3:]) is None
