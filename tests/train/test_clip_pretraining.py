from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import torch

from tcl.checkpoint import load_saved_clip, save_clip
from tcl.model import create_clip
from tcl.train.clip_pretraining import ClipPretrainConfig, pretrain_clip
from tests.data.test_stream import write_shards

REPO = Path(__file__).resolve().parents[2]


def test_pretraining_fits_a_small_batch(tiny_clip_config):
    torch.manual_seed(0)
    clip = create_clip(tiny_clip_config)
    from open_clip.tokenizer import SimpleTokenizer

    batch = {"image": torch.randn(8, 3, 64, 64),
             "text": SimpleTokenizer()([f"a photo of thing number {i}" for i in range(8)])}
    logs = []
    result = pretrain_clip(clip, itertools.repeat(batch), ClipPretrainConfig(
        steps=60, lr=3e-3, warmup_steps=5, log_every=10), logs.append)
    assert [r["step"] for r in logs] == [10, 20, 30, 40, 50, 60]
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    assert result["accuracy"] == 1.0 and not clip.training


def test_saved_clip_reloads_identically(tiny_clip_config, tmp_path):
    clip = create_clip(tiny_clip_config)
    save_clip(tmp_path, clip, tiny_clip_config)
    loaded = load_saved_clip(tmp_path)
    assert json.loads((tmp_path / "clip.json").read_text())["model"]["vision_cfg"]["patch_size"] == 16
    for key, value in clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_stage_trains_and_reports(tmp_path):
    write_shards(tmp_path / "shards", "s", shards=2, per_shard=8)
    params = (REPO / "params.yaml").read_text().replace("- data/synthetic/shards", f"- {tmp_path / 'shards'}")
    params = params.replace("batch_size: 64", "batch_size: 4").replace("num_workers: 2", "num_workers: 0")
    (tmp_path / "params.yaml").write_text(params)
    script = str(REPO / "stages" / "prepare_clip.py")
    done = subprocess.run([sys.executable, script, "--params", str(tmp_path / "params.yaml"), "--out",
                           str(tmp_path / "clip"), "--steps", "3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 3/3 loss" in done.stdout
    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["source"] == "trained from scratch"
    assert load_saved_clip(tmp_path / "clip").visual.conv1.kernel_size == (8, 8)

    (tmp_path / "bad.yaml").write_text(params.replace("steps: 300", "steps: 0"))
    bad = subprocess.run([sys.executable, script, "--params", str(tmp_path / "bad.yaml"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "prepare_clip: error: prepare_clip.steps: must be >= 1, got 0"
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=600)
    assert helped.returncode == 0 and "--steps" in helped.stdout
