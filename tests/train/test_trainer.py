"""The training loop: checkpoints, exact resume after SIGKILL, UST with DDP, non-finite steps, precision."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcl.checkpoint import load_model, read_checkpoint
from tcl.config import Params, from_dict
from tcl.train.trainer import Trainer, TrainingError, train
from tests.params_file import project_params
from tests.train.conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "stages" / "train.py"


def build_params(shards: Path, **train_overrides) -> Params:
    return from_dict(Params, tiny_params(shards, **train_overrides))


def block_copies(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("masker.blocks.")}


def stage_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def test_training_writes_checkpoints_curves_and_a_loadable_model(tmp_path, tiny_clip_dir, tiny_shards):
    lines: list[str] = []
    summary = train(build_params(tiny_shards), tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "metrics",
                    track=False, log=lines.append)
    assert summary["step"] == 6 and summary["nonfinite_steps"] == 0
    assert {"area_loss", "tclf_loss", "tcli_loss", "tv_img_loss"} <= set(summary)
    for name in ("latest.pt", "best.pt", "config.json"):
        assert (tmp_path / "out" / name).is_file()
    curve = (tmp_path / "metrics" / "train_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 6 and "grad_norm" in curve[0] and "mask_area" in curve[0]
    assert any(line.startswith("step 6/6 | loss") and "samples/s" in line and "eta" in line for line in lines)

    checkpoint = read_checkpoint(tmp_path / "out" / "latest.pt")
    assert not any(key.startswith("clip.") for key in checkpoint["model"])  # the frozen CLIP is not saved
    assert checkpoint["stream"][0]["batches"] == 6
    model = load_model(tmp_path / "out" / "best.pt")
    untrained = Trainer(build_params(tiny_shards), tiny_clip_dir, tmp_path / "fresh", metrics_dir=tmp_path / "m2",
                        resume="none", track=False).model
    trained, initial = model.state_dict(), untrained.state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in trained if k.startswith("clip."))
    assert not all(torch.equal(trained[k], initial[k]) for k in block_copies(trained))  # UST ended at step 3
    assert not torch.equal(trained["masker.sim2mask.w"], initial["masker.sim2mask.w"])


def test_decoder_only_phase_keeps_the_block_copies_fixed(tmp_path, tiny_clip_dir, tiny_shards):
    params = build_params(tiny_shards, steps=3, ust_steps=3)
    trainer = Trainer(params, tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "metrics", track=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in block_copies(after))
    assert not all(torch.equal(after[k], before[k]) for k in after if k.startswith("masker.decoder."))
    state = trainer.optimizer.state
    assert not any(p in state for p in trainer.frozen_in_ust)  # fresh Adam state when they start (no grad yet)


def run_stage(params_file: Path, clip: Path, out: Path, metrics: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, str(STAGE), "--params", str(params_file), "--clip", str(clip), "--out", str(out),
               "--metrics", str(metrics), "--no-tracking", *extra]
    return subprocess.Popen(command, cwd=ROOT, env=stage_env(), text=True, **popen)


def test_a_run_killed_with_sigkill_resumes_to_bit_identical_weights(tmp_path, tiny_clip_dir, tiny_shards):
    params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards))
    reference = run_stage(params_file, tiny_clip_dir, tmp_path / "a", tmp_path / "ma", stdout=subprocess.DEVNULL)
    assert reference.wait(timeout=300) == 0

    victim = run_stage(params_file, tiny_clip_dir, tmp_path / "b", tmp_path / "mb", stdout=subprocess.PIPE)
    for line in victim.stdout:  # bounded: the process ends after 6 steps at the latest
        if line.startswith("step 3/6"):
            victim.send_signal(signal.SIGKILL)  # mid-way through step 4; latest.pt holds step 2
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert read_checkpoint(tmp_path / "b" / "latest.pt")["step"] == 2

    resumed = run_stage(params_file, tiny_clip_dir, tmp_path / "b", tmp_path / "mb", stdout=subprocess.PIPE)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resumed from" in output
    a, b = read_checkpoint(tmp_path / "a" / "latest.pt"), read_checkpoint(tmp_path / "b" / "latest.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments_a = [s["exp_avg_sq"] for s in a["optimizer"]["state"].values()]
    moments_b = [s["exp_avg_sq"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))
    curve = (tmp_path / "mb" / "train_curve.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in curve[1:]] == [str(s) for s in range(1, 7)]  # no duplicated steps


def two_process_stage(params_file: Path, clip: Path, tmp_path: Path) -> list[str]:
    """The train stage under torchrun with two CPU processes, writing to ``tmp_path``/out and /metrics."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(STAGE),
            "--params", str(params_file), "--clip", str(clip), "--out", str(tmp_path / "out"),
            "--metrics", str(tmp_path / "metrics"), "--no-tracking"]


def test_two_processes_keep_replicas_identical_across_the_decoder_only_switch(tmp_path, tiny_clip_dir, tiny_shards):
    params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards, steps=2, ust_steps=2))
    command = two_process_stage(params_file, tiny_clip_dir, tmp_path)
    for steps in (2, 5):  # the UST phase, then past the switch (resumed from the step-2 checkpoint)
        result = subprocess.run([*command, "--steps", str(steps)], cwd=ROOT, env=stage_env(), text=True,
                                capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        checkpoint = read_checkpoint(tmp_path / "out" / "latest.pt")
        assert checkpoint["step"] == steps and len(checkpoint["stream"]) == 2
        digests = checkpoint["extra"]["replica_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        if steps == 2:
            ust_blocks = block_copies(checkpoint["model"])
    assert checkpoint["extra"]["derived"]["global_batch"] == 8
    trained_blocks = block_copies(checkpoint["model"])
    assert not all(torch.equal(trained_blocks[k], ust_blocks[k]) for k in trained_blocks)


@pytest.mark.parametrize("terms", [["region"], ["image"]])
def test_two_processes_train_with_one_tcl_term(tmp_path, tiny_clip_dir, tiny_shards, terms):
    """The other term's temperature gets no gradient: DDP must be told (or the second step fails)."""
    params = tiny_params(tiny_shards, steps=3, ust_steps=1)
    params_file = write_params(tmp_path / "params.yaml", {**params, "model": {**params["model"], "tcl_terms": terms}})
    result = subprocess.run(two_process_stage(params_file, tiny_clip_dir, tmp_path), cwd=ROOT, env=stage_env(),
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = read_checkpoint(tmp_path / "out" / "latest.pt")
    digests = checkpoint["extra"]["replica_digests"]
    assert checkpoint["step"] == 3 and digests[0] == digests[1]
    assert ("tcli_loss" in result.stdout) == (terms == ["image"])


def test_non_finite_steps_are_skipped_counted_and_stop_training(tmp_path, tiny_clip_dir, tiny_shards):
    params = build_params(tiny_shards, max_nonfinite=2)
    trainer = Trainer(params, tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "metrics", track=False)
    good = next(iter(trainer.stream))
    bad = {**good, "image": torch.full_like(good["image"], float("nan"))}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(iter([bad]))
    assert trainer.nonfinite_total == 1 and trainer.step == 1
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    trainer.train_step(iter([good]))
    assert trainer.nonfinite_in_row == 0 and trainer.nonfinite_total == 1
    trainer.train_step(iter([bad]))
    with pytest.raises(TrainingError, match="non-finite loss or gradients in 2 consecutive steps"):
        trainer.train_step(iter([bad]))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_on_cpu(tmp_path, tiny_clip_dir, tiny_shards, precision):
    params = build_params(tiny_shards, precision=precision, grad_accum=2)
    trainer = Trainer(params, tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "metrics", track=False)
    batches = iter(trainer.stream)
    logged = trainer.train_step(batches)
    assert trainer.stream_state.batches == 2  # two micro-batches per optimizer step
    assert (trainer.scaler is not None) == (precision == "fp16")
    assert torch.isfinite(torch.tensor(logged["loss"]))
    assert trainer.global_batch == 8


def stage_error(capsys, *argv) -> str:
    from stages.train import main

    assert main([*map(str, argv), "--no-tracking"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gets_one_line_errors(tmp_path, tiny_clip_dir, tiny_shards, capsys):
    good = tiny_params(tiny_shards)
    params_file = write_params(tmp_path / "p.yaml", good)
    common = ("--clip", tiny_clip_dir, "--out", tmp_path / "out", "--metrics", tmp_path / "m")
    assert "no CLIP at" in stage_error(capsys, "--params", params_file, "--clip", tmp_path / "nowhere")
    typo = write_params(tmp_path / "typo.yaml", {**good, "train": {**good["train"], "stpes": 3}})
    assert "unknown key 'train.stpes'" in stage_error(capsys, "--params", typo, *common)
    wrong = write_params(tmp_path / "wrong.yaml", {**good, "train": {**good["train"], "steps": "many"}})
    assert "train.steps: expected int" in stage_error(capsys, "--params", wrong, *common)
    no_data = write_params(tmp_path / "nodata.yaml", {**good, "data": {**good["data"], "sources": [
        {"name": "gone", "patterns": [str(tmp_path / "missing-{000000..000002}.tar")]}]}})
    assert "no shards found for gone" in stage_error(capsys, "--params", no_data, *common)
    (tmp_path / "file").write_text("")
    assert "cannot create output folder" in stage_error(capsys, "--params", params_file, "--clip", tiny_clip_dir,
                                                        "--out", tmp_path / "file" / "out")

    # a checkpoint of the file's settings (project_params: what write_params writes), then another model config
    train(from_dict(Params, project_params(tiny_params(tiny_shards, steps=2))), tiny_clip_dir, tmp_path / "out",
          metrics_dir=tmp_path / "m", track=False)
    other = write_params(tmp_path / "other.yaml", {**good, "model": {"ie_freeze": 1}})
    assert "comes from another model config (model.ie_freeze differs)" in stage_error(
        capsys, "--params", other, *common)


def test_periodic_validation_keeps_the_best_checkpoint(tmp_path, tiny_clip_dir, tiny_shards):
    from tests.eval.conftest import write_layout

    write_layout(tmp_path, "voc", split="train", images=2)  # the training split t_synthetic_voc reads
    raw = tiny_params(tiny_shards, steps=4, val_every=2, val_benchmarks=["t_synthetic_voc"])
    raw["evaluate"] = {"data_roots": {"synthetic_voc": "data/VOCdevkit/VOC2012"}, "num_workers": 0, "overlays": 0,
                       "protocols": {"synthetic": {"short_side": 24, "long_side": 64, "crop": 16, "stride": 8}}}
    lines: list[str] = []
    summary = train(from_dict(Params, raw), tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "m",
                    root=tmp_path, track=False, log=lines.append)
    rows = (tmp_path / "m" / "val_curve.csv").read_text().splitlines()
    assert rows[0] == "step,t_synthetic_voc_miou,avg_miou" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    scores = [float(r.split(",")[2]) for r in rows[1:]]
    assert summary["best_avg_miou"] == max(scores)
    best = read_checkpoint(tmp_path / "out" / "best.pt")
    assert best["step"] == [2, 4][scores.index(max(scores))]
    validations = [line for line in lines if line.startswith("validation at step")]
    assert len(validations) == 2 and all("t_synthetic_voc bg_thresh" in line for line in validations)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_a_failing_exit(tmp_path, tiny_clip_dir, tiny_shards):
    params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards))
    process = run_stage(params_file, tiny_clip_dir, tmp_path / "out", tmp_path / "m", stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
    for line in process.stdout:  # bounded: the process ends after 6 steps at the latest
        if line.startswith("step 2/6"):
            process.send_signal(signal.SIGTERM)
            break
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output  # DVC must not record a half-trained model
    assert "stopped at step" in output
    step = read_checkpoint(tmp_path / "out" / "latest.pt")["step"]
    assert 2 <= step < 6
