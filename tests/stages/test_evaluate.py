"""stages/evaluate.py and stages/report.py end to end on a tiny CLIP and tiny benchmark folders."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_CLIP
from tests.eval.conftest import write_layout
from tests.params_file import project_params, write_params_file

REPO = Path(__file__).resolve().parents[2]


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: params.yaml for the tiny CLIP, models/clip, and VOC-layout data."""
    from tcl.checkpoint import save_clip
    from tcl.model import create_clip

    root = tmp_path_factory.mktemp("project")
    torch.manual_seed(0)
    save_clip(root / "models/clip", create_clip(dict(TINY_CLIP)), dict(TINY_CLIP))
    write_layout(root, "voc", images=3)
    params = {"clip": {"model": dict(TINY_CLIP)}, "model": {"ie_freeze": 2},
              "evaluate": {"protocols": {"paper": {"short_side": 32, "long_side": 64, "crop": 32, "stride": 16}},
                           "num_workers": 0, "overlays": 2}}
    write_params_file(root / "params.yaml", params)
    return root


def run_stage(project, capsys, *args, mlflow=False):
    flags = [] if mlflow else ["--no-mlflow"]
    code = _stage("evaluate").main(["--params", str(project / "params.yaml"), *flags, *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_step0_baseline_writes_metrics_and_overlays(project, capsys):
    out = project / "metrics/eval/voc.json"
    code, stdout, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip",
                                "--baseline", "step0", "--out", out, "--overlays", project / "overlays")
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"benchmark", "miou", "aacc", "per_class_iou", "settings", "images_per_s", "num_images",
                           "model", "overlays"}
    assert result["num_images"] == 3 and len(result["per_class_iou"]) == 21
    assert result["model"] == {"source": "baseline", "baseline": "step0", "clip": str(project / "models/clip")}
    assert result["settings"] | {"short_side": 32, "crop": 32, "pamr": True, "bg_thresh": 0.4, "kp_w": 0.3} \
        == result["settings"]
    assert len(list((project / "overlays").glob("voc_*.png"))) == 2
    assert f"voc: mIoU {result['miou']}" in stdout


def test_every_result_records_its_throughput_precision_and_device(project, capsys):
    """The JSON of a real (tiny) evaluation: images/s and windows/s, consistent with the counts; the
    precision and device; the text embeddings stored under evaluate.text_cache at the first run, read
    back at the next with the same numbers."""
    cache = project / ".cache/text_embeddings"  # the default, relative to the project root
    shutil.rmtree(cache, ignore_errors=True)
    runs = []
    for name in ("first", "second"):
        out = project / f"throughput/{name}.json"
        code, stdout, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip",
                                    "--baseline", "step0", "--out", out, "--overlays", "")
        assert code == 0
        runs.append(json.loads(out.read_text()))
        assert "windows/s, fp32 on cpu" in stdout
    for result in runs:
        assert result["num_images"] == 3 and result["num_windows"] >= result["num_images"]
        assert result["seconds"] > 0 and result["windows_per_s"] >= result["images_per_s"] > 0
        assert result["windows_per_s"] == pytest.approx(
            result["images_per_s"] * result["num_windows"] / result["num_images"], rel=1e-3)
        assert (result["precision"], result["device"]) == ("fp32", "cpu")
        assert (result["settings"]["precision"], result["settings"]["precision_requested"]) == ("fp32", "fp32")
    assert [r["text_embedding"]["cache"] for r in runs] == ["miss", "hit"]
    files = [Path(r["text_embedding"]["file"]) for r in runs]
    assert [p.parent for p in files] == [Path(".cache/text_embeddings")] * 2  # as params.yaml names it
    assert (project / runs[1]["text_embedding"]["file"]).parent == cache
    assert runs[0]["per_class_iou"] == runs[1]["per_class_iou"] and runs[0]["miou"] == runs[1]["miou"]


def test_maskclip_baseline_and_no_pamr_switch(project, capsys):
    out = project / "metrics/eval/voc20.json"
    code, _, _ = run_stage(project, capsys, "--benchmark", "voc20", "--clip", project / "models/clip", "--baseline",
                           "maskclip", "--out", out, "--overlays", "")
    assert code == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["pamr"], settings["kp_w"], settings["bg_thresh"]) == (False, 1.0, None)
    out = project / "metrics/eval/t_voc20.json"
    write_layout(project, "voc", split="train", images=2)
    code, _, _ = run_stage(project, capsys, "--benchmark", "t_voc20", "--clip", project / "models/clip", "--baseline",
                           "step0", "--setting", "no_pamr", "--out", out, "--overlays", "")
    settings = json.loads(out.read_text())["settings"]
    assert code == 0 and (settings["setting"], settings["pamr"], settings["kp_w"]) == ("no_pamr", False, 0.3)


def test_bg_thresh_sweep_then_evaluation_with_its_best(project, capsys):
    sweep_file = project / "metrics/bg_thresh.json"
    code, stdout, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip",
                                "--baseline", "step0", "--sweep-bg-thresh", "--out", sweep_file)
    sweep = json.loads(sweep_file.read_text())
    candidates = project_params()["evaluate"]["bg_thresh_candidates"]  # the file's, through write_params_file
    assert code == 0 and set(sweep["candidates"]) == {str(c) for c in candidates}
    assert sweep["candidates"][str(sweep["best"])] == sweep["best_miou"] == max(sweep["candidates"].values())
    out = project / "tuned/voc.json"
    code, _, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip", "--baseline",
                           "step0", "--bg-thresh", sweep_file, "--out", out, "--overlays", "")
    result = json.loads(out.read_text())
    assert code == 0 and result["settings"]["bg_thresh"] == sweep["best"] and result["miou"] == sweep["best_miou"]


def test_all_benchmarks_in_one_process_with_the_threshold_chosen_first(project, capsys):
    """The baseline stage's command: choose bg_thresh on the split, then score every benchmark with it."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"].update(benchmarks=["voc", "voc20"], bg_thresh_split="voc")
    params_file = project / "params_all.yaml"
    params_file.write_text(yaml.safe_dump(params))
    chosen, out_dir = project / "all/bg_thresh.json", project / "all/results"
    code = _stage("evaluate").main(["--params", str(params_file), "--no-mlflow", "--all-benchmarks", "--clip",
                                    str(project / "models/clip"), "--baseline", "step0", "--choose-bg-thresh",
                                    str(chosen), "--out-dir", str(out_dir), "--overlays", ""])
    assert code == 0 and sorted(p.name for p in out_dir.iterdir()) == ["voc.json", "voc20.json"]
    sweep = json.loads(chosen.read_text())
    voc = json.loads((out_dir / "voc.json").read_text())
    # the same numbers as the two-step route (sweep, then --bg-thresh FILE) of the previous test
    assert voc["settings"]["bg_thresh"] == sweep["best"] and voc["miou"] == sweep["best_miou"]
    assert json.loads((out_dir / "voc20.json").read_text())["settings"]["bg_thresh"] is None  # no background


def test_set_overrides_one_parameter_for_this_run(project, capsys):
    out = project / "set/voc.json"
    code, _, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip", "--baseline",
                           "step0", "-S", "evaluate.bg_thresh=0.55", "--set", "evaluate.kp_w=0.1", "--out", out,
                           "--overlays", "", "--limit", "1")
    settings = json.loads(out.read_text())["settings"]
    assert code == 0 and (settings["bg_thresh"], settings["kp_w"]) == (0.55, 0.1)


def test_training_checkpoint(project, capsys, tiny_tcl):
    from tcl.checkpoint import save_checkpoint

    checkpoint = project / "models/tcl/best.pt"
    save_checkpoint(checkpoint, model=tiny_tcl, step=7, params={"model": {"ie_freeze": 2}},
                    clip={"model": dict(TINY_CLIP), "weights": str(project / "models/clip/clip.pt")},
                    extra={"mlflow_run_id": None})
    out = project / "ckpt/voc.json"
    code, _, _ = run_stage(project, capsys, "--benchmark", "voc", "--checkpoint", checkpoint, "--out", out,
                           "--overlays", "", "--limit", "1")
    result = json.loads(out.read_text())
    assert code == 0 and result["num_images"] == 1
    assert result["model"] == {"source": "checkpoint", "checkpoint": str(checkpoint), "format": "training", "step": 7}


def test_mlflow_child_run_under_the_training_run(project, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tcl.tracking import PARENT_RUN_ENV, RunTracker

    monkeypatch.chdir(project)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with RunTracker.start("train") as parent:
        code, _, _ = run_stage(project, capsys, "--benchmark", "voc", "--clip", project / "models/clip", "--baseline",
                               "step0", "--out", project / "mlflow_voc.json", "--overlays", project / "ov", "--limit",
                               "2", "--parent-run-id", parent.run_id, mlflow=True)
    assert code == 0
    client = MlflowClient(uri)
    [child] = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{parent.run_id}'")
    result = json.loads((project / "mlflow_voc.json").read_text())
    assert child.data.tags["tcl.run_name"] == "baseline-step0-voc" and child.info.status == "FINISHED"
    assert child.info.run_name.startswith("baseline-step0-voc")  # plus the label of its parent run
    assert child.data.tags["model_kind"] == "step0"
    assert child.data.metrics["miou"] == result["miou"] and "iou/background" in child.data.metrics
    assert child.data.params["evaluate.bg_thresh"] == "0.4" and child.data.params["model.baseline"] == "step0"
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "eval")}
    assert artifacts == {"eval/voc.json"}
    assert len(client.list_artifacts(child.info.run_id, "overlays/voc")) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--benchmark", "pascal", "--clip", "models/clip", "--baseline", "step0"],
     "evaluate: error: unknown benchmark 'pascal' (known: voc, voc20,"),
    (["--benchmark", "ade20k", "--clip", "models/clip", "--baseline", "step0"],
     "ADEChallengeData2016/images/validation not found"),
    (["--benchmark", "voc", "--clip", "models/clip"], "evaluate: error: --clip needs --baseline"),
    (["--benchmark", "voc", "--checkpoint", "missing.pt"], "evaluate: error: checkpoint not found: missing.pt"),
    (["--benchmark", "voc", "--clip", "nowhere", "--baseline", "step0"], "nowhere/clip.json not found"),
    (["--benchmark", "voc", "--clip", "models/clip", "--baseline", "step0", "--bg-thresh", "high"],
     "evaluate: error: --bg-thresh: 'high' is neither a number nor a file"),
    (["--benchmark", "voc", "--clip", "models/clip", "--baseline", "step0", "-S", "evaluate.pamr=maybe"],
     "evaluate: error: evaluate.pamr: expected bool"),
    (["--benchmark", "voc", "voc20", "--clip", "models/clip", "--baseline", "step0", "--out", "x.json"],
     "evaluate: error: --out names one benchmark's result: use --out-dir"),
    (["--all-benchmarks", "--clip", "models/clip", "--baseline", "step0", "--bg-thresh", "0.5",
      "--choose-bg-thresh", "b.json"], "evaluate: error: --choose-bg-thresh and --bg-thresh both set"),
    # errors of the library's model sources and threshold protocol (TCLErrors, caught by run_stage)
    (["--benchmark", "voc", "--clip", "models/clip", "--baseline", "step0", "--device", "nope"],
     "evaluate: error: --device: 'nope' is not a torch device"),
    (["--benchmark", "voc", "--clip", "models/clip", "--baseline", "step0", "-S", "model.ie_freeze=3"],
     "evaluate: error: ie_freeze must be in 1..2 for a 3-block CLIP, got 3"),
    (["--benchmark", "voc20", "--clip", "models/clip", "--baseline", "step0", "--sweep-bg-thresh", "--out", "s.json"],
     "evaluate: error: benchmark 'voc20' has no background class: bg_thresh does not apply"),
    (["--benchmark", "voc", "--clip", "models/clip", "--baseline", "step0", "--bg-thresh", "params.yaml"],
     "evaluate: error: --bg-thresh: params.yaml holds no 'best' threshold"),
])
def test_bad_input_is_one_line_and_exit_2(project, capsys, monkeypatch, args, message):
    monkeypatch.chdir(project)
    try:
        code, _, err = run_stage(project, capsys, *args)
    except SystemExit as exit_:  # argparse-level errors
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_report_table_with_mean(project, capsys):
    report = _stage("report")
    assert report.main(["--inputs", str(project / "metrics/eval"), "--out", str(project / "metrics/report")]) == 0
    data = json.loads((project / "metrics/report/report.json").read_text())
    names = [row["benchmark"] for row in data["rows"]]
    assert names[:2] == ["voc", "voc20"]  # registry order
    counted = [row["miou"] for row in data["rows"] if not row["benchmark"].startswith("t_")]
    assert data["mean"]["miou"] == round(sum(counted) / len(counted), 2)
    assert "t_voc20" not in data["mean"]["benchmarks"]
    markdown = (project / "metrics/report/report.md").read_text()
    assert "| **mean** (2) |" in markdown and "t_voc20 (train split)" in markdown
    assert report.main(["--inputs", str(project / "nothing"), "--out", str(project / "r")]) == 2
    assert "report: error: " in capsys.readouterr().err


def test_help_shows_the_usage():
    result = subprocess.run([sys.executable, str(REPO / "stages/evaluate.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--baseline" in result.stdout and "torchrun" in result.stdout


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(project, tmp_path):
    """The stage under torchrun (2 CPU processes, gloo) writes the single-process numbers."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    common = ["stages/evaluate.py", "--params", str(project / "params.yaml"), "--benchmark", "voc", "--clip",
              str(project / "models/clip"), "--baseline", "step0", "--no-mlflow", "--overlays", ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.json")], cwd=REPO, env=env, check=True,
                   timeout=600, capture_output=True)
    subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29517", *common, "--out",
                    str(tmp_path / "two.json")], cwd=REPO, env=env, check=True, timeout=600, capture_output=True)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["settings"]["world_size"] == 2 and two["num_images"] == one["num_images"] == 3
    assert (two["miou"], two["aacc"], two["per_class_iou"]) == (one["miou"], one["aacc"], one["per_class_iou"])


def test_a_fixed_threshold_passes_through_the_sweep_without_scoring(tmp_path, capsys):
    params = tmp_path / "params.yaml"  # no data, no model: a fixed threshold needs neither
    write_params_file(params, {"evaluate": {"bg_thresh": 0.4}})
    out = tmp_path / "bg_thresh.json"
    code = _stage("evaluate").main(["--params", str(params), "--benchmark", "t_synthetic_voc", "--checkpoint",
                                    str(tmp_path / "absent.pt"), "--sweep-bg-thresh", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text()) == {"benchmark": "t_synthetic_voc", "candidates": {}, "best": 0.4,
                                           "fixed": True}
