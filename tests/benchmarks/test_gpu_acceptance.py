"""benchmarks/gpu_acceptance.py cannot rot: its tiny CPU run goes through every section, as CI runs it
(a subprocess from the repository root, no PYTHONPATH), and its benchmark table and projections are right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.benchmarks import load_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
SECTIONS = ("config", "process_group", "train", "eval", "projection", "checks", "targets", "summary")


def load_script():
    return load_benchmark("gpu_acceptance")


def paper_benchmarks() -> list[str]:
    return yaml.safe_load((REPO / "configs/paper.yaml").read_text())["evaluate.benchmarks"]


def test_the_tiny_cpu_run_measures_every_section_and_its_checks_pass(tmp_path):
    out = tmp_path / "acceptance.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, str(SCRIPT.relative_to(REPO)), "--device", "cpu", "--tiny", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert all(section in report for section in SECTIONS), sorted(report)
    assert report["profile"] == "tiny" and report["device"] == "cpu"
    assert report["process_group"] == {"backend": "gloo", "world_size": 1}

    steps = report["train"]["steps"]
    assert steps["ddp"] and steps["precision"] == "bf16"
    for phase in ("decoder_only", "full"):
        assert steps[phase]["samples_per_s"] > 0 and steps[phase]["n"] >= 2
    resume = report["train"]["resume"]
    losses = steps["losses"] + resume["losses_uninterrupted"] + resume["losses_resumed"]
    assert losses and all(math.isfinite(value) for value in losses)
    # SIGTERM after step 1: latest.pt at step 2, resumed to 4, exactly the uninterrupted run on the CPU
    assert resume["stopped_early"] and resume["stopped_at"] == 2 and resume["final_steps"] == [4, 4]
    assert resume["state_restored_exact"] and resume["bit_identical"] and resume["ok"]
    assert resume["losses_resumed"] == resume["losses_uninterrupted"] and len(resume["losses_resumed"]) == 4
    assert report["train"]["loop"]["samples_per_s"] > 0

    evaluation = report["eval"]
    assert set(evaluation["windows"]) == {"fp32_20", "bf16_20", "fp32_171", "bf16_171"}
    assert all(record["windows_per_s"] > 0 for record in evaluation["windows"].values())
    assert set(evaluation["agreement"]) == {"20", "171"}
    assert all(0.0 <= value <= 1.0 for value in evaluation["agreement"].values())

    projected = report["projection"]["evaluation"]
    assert [row["benchmark"] for row in projected["benchmarks"]] == paper_benchmarks()
    assert all(value > 0 for value in projected["seconds"].values()) and set(projected["seconds"]) == {"fp32", "bf16"}
    schedule = report["projection"]["training"]
    assert schedule["steps"] == 50000 and schedule["seconds_on_1"] > 0
    assert schedule["seconds_on_8"] == pytest.approx(schedule["seconds_on_1"] / 8)
    assert all(report["checks"].values()), report["checks"]

    lines = done.stdout.splitlines()
    assert any(line.endswith("samples/s over steps 2-4") for line in lines)  # progress lines while it runs
    assert [line.split(":")[1].strip() for line in lines if line.startswith("summary:")] == \
        ["eight benchmarks", "training", "50k-step schedule", "checks"]
    assert lines[-1] == f"gpu_acceptance: wrote {out}"


def test_the_benchmark_table_is_the_papers_eight_with_mmsegs_classes():
    from mmseg.registry import DATASETS

    from tcl.eval import get_benchmark
    from tcl.eval.datasets import _import_mmseg

    _import_mmseg()  # registers the two extra dataset classes
    table = load_script().EIGHT_BENCHMARKS
    assert [bench.name for bench in table] == paper_benchmarks()
    for bench in table:
        entry = get_benchmark(bench.name)
        classes = DATASETS.get(entry.dataset).METAINFO["classes"]
        assert bench.classes == len(classes) - entry.with_background, bench.name


def test_projections_follow_the_protocols_windows_and_the_measured_rates():
    script = load_script()
    from tcl.eval.config import Protocol

    low, high = script.CLASS_POINTS
    rates = {f"{precision}_{classes}": {"seconds_per_window": seconds}
             for precision, scale in (("fp32", 1.0), ("bf16", 0.5))
             for classes, seconds in ((low, 1.0 * scale), (high, 2.0 * scale))}
    projected = script.project_evaluation(rates, {str(high): 171.0}, Protocol())
    rows = {row["benchmark"]: row for row in projected["benchmarks"]}
    assert rows["voc"]["protocol_size"] == [448, 597] and rows["voc"]["windows_per_image"] == 2
    assert rows["cityscapes"]["protocol_size"] == [448, 896] and rows["cityscapes"]["windows_per_image"] == 3
    assert projected["windows"] == sum(row["windows"] for row in rows.values()) == 51716
    # 20 classes: 1 s per window and 20 s of text embeddings; 171: 2 s and 171 s; bf16 windows at half the cost
    assert rows["voc"]["seconds"]["fp32"] == pytest.approx(2 * 1449 + 20)
    assert rows["coco_stuff"]["seconds"]["bf16"] == pytest.approx(10000 * 1.0 + 171)
    assert projected["seconds"]["fp32"] == pytest.approx(sum(row["seconds"]["fp32"] for row in rows.values()))

    from tcl.config import load_overrides_file, validate_overrides

    params = validate_overrides(REPO / "params.yaml", load_overrides_file(REPO / "configs/paper.yaml"))
    schedule = script.project_training({"decoder_only": {"samples_per_s": 1024.0}, "full": {"samples_per_s": 512.0}},
                                       params)
    assert schedule["seconds_on_1"] == pytest.approx(30000 * 1 + 20000 * 2)  # the paper's 30k UST + 20k full steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_asking_for_cuda_without_one_is_one_line_and_exit_2(tmp_path, capsys):
    assert load_script().main(["--device", "cuda", "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "--device cpu" in err
    assert not (tmp_path / "a.json").exists()


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        load_script().main(["--steps", "1"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gpu_acceptance: error: --steps must be >= 2")
