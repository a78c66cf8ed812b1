"""The paper's configuration executed end to end (slow: minutes on 2 CPU cores).

configs/paper.yaml as `python -m pipelines.run --overrides-file configs/paper.yaml` applies it, with only the
sizes reduced: the ViT-B/16 (random weights, saved as OpenAI's fp16 ViT-B-16.pt, read by the prepare_clip stage
as the paper setting reads the real file), ``ie_freeze: 11``, 2 decoder stages, 224-px crops with the paper's
augmentation, ``grad_accum: 2``, bf16/fp32 as ``train.precision: auto`` chooses, the paper's evaluation setting
(PAMR, KP 0.3, a fixed bg_thresh 0.4, the 9 custom templates) and the paper's window geometry (448 px, stride
224) on the synthetic benchmarks. DVC runs the stages with the commands of dvc.yaml (synthetic world,
download@synthetic over loopback, prepare_clip, train under torchrun, evaluate on synthetic_voc); the
data are the synthetic world's, at reduced size: 2 training steps of 2 x 2 images, a validation and an
evaluation of a few 448-px windows.
"""

from __future__ import annotations

import csv
import json
import math
import time

import pytest
import torch

from .conftest import copy_project, run_python

#: What configs/paper.yaml keeps but a test cannot afford, or points at data a test does not have.
PAPER_AT_TEST_SIZE = {
    "clip.weights": "ViT-B-16-random.pt",  # instead of openai (a download)
    "synthetic.pairs": 48, "synthetic.image_size": 224, "synthetic.val_images": 3, "synthetic.train_images": 1,
    "download.sources": {"synthetic": {"root": "data/synthetic/corpus", "list": "pairs.tsv", "serve": True,
                                       "out": "data/synthetic/shards", "prefix": "synthetic-", "image_size": 224,
                                       "samples_per_shard": 16, "processes": 1, "threads": 4, "sort_samples": True}},
    "data.sources": [{"name": "synthetic", "patterns": ["data/synthetic/shards"], "weight": 1.0}],
    "data.batch_size": 2, "data.num_workers": 0, "data.shuffle_buffer": 8, "data.shuffle_initial": 8,
    "train.steps": 2, "train.ust_steps": 1, "train.warmup_steps": 1, "train.log_every": 1,
    "train.val_benchmarks": ["t_synthetic_voc"],
    "pipeline.coco_object": {"synthetic": {"root": "data/synthetic/coco_stuff164k",
                                           "out": "data/synthetic/coco_object"}},
    "evaluate.benchmarks": ["synthetic_voc"],
    "evaluate.protocols.synthetic": {"short_side": 448, "long_side": 2048, "crop": 448, "stride": 224},
    "evaluate.num_workers": 0, "evaluate.overlays": 1,
}


@pytest.mark.slow
def test_the_paper_configuration_trains_and_evaluates_through_the_real_stages(tmp_path, monkeypatch):
    from tcl.checkpoint import read_checkpoint
    from tcl.model import OPENAI_VIT_B16, create_clip

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_project(tmp_path / "project")
    torch.manual_seed(0)
    state = create_clip(OPENAI_VIT_B16).state_dict()
    torch.save({key: value.half() for key, value in state.items()}, root / "ViT-B-16-random.pt")  # as OpenAI's: fp16
    del state
    sets = [f"{key}={json.dumps(value)}" for key, value in PAPER_AT_TEST_SIZE.items()]
    start = time.monotonic()
    done = run_python(["-m", "pipelines.run", "--no-tracking", "--overrides-file", "configs/paper.yaml",
                       *[arg for item in sets for arg in ("-S", item)], "evaluate"], root, timeout=2400)
    seconds = time.monotonic() - start
    print(f"paper configuration, 2 steps + evaluation, through DVC: {seconds:.0f} s")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]

    lock = (root / "dvc.lock").read_text()
    for stage in ("synthetic", "download@synthetic", "prepare_clip", "train", "evaluate"):
        assert f"  {stage}:\n" in lock, stage
    assert json.loads((root / "models/clip/clip.json").read_text())["model"] == OPENAI_VIT_B16

    checkpoint = read_checkpoint(root / "models/tcl/best.pt")
    model, data, train = (checkpoint["params"][key] for key in ("model", "data", "train"))
    assert checkpoint["step"] == 2 and checkpoint["clip"]["model"] == OPENAI_VIT_B16
    assert (model["ie_freeze"], model["decoder_stages"]) == (11, 2)  # the paper's model, not params.yaml's tiny one
    assert (data["image_size"], data["augment"], train["grad_accum"]) == (224, "paper", 2)
    assert checkpoint["extra"]["derived"]["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")
    # the masker copies CLIP's 12th block only (ie_freeze 11 of 12)
    assert any(key.startswith("masker.blocks.0.") for key in checkpoint["model"])
    assert not any(key.startswith("masker.blocks.1.") for key in checkpoint["model"])

    with (root / "metrics/train_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2]
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    with (root / "metrics/val_curve.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [2]  # validated on t_synthetic_voc at the end

    assert json.loads((root / "metrics/bg_thresh/tcl.json").read_text())["best"] == 0.4  # fixed, passed through
    result = json.loads((root / "metrics/eval/synthetic_voc.json").read_text())
    settings = result["settings"]
    assert (settings["short_side"], settings["crop"], settings["stride"]) == (448, 448, 224)
    assert (settings["pamr"], settings["kp_w"], settings["bg_thresh"]) == (True, 0.3, 0.4)
    assert settings["template"] == "custom"
    assert result["num_images"] == 3 and 0.0 <= result["miou"] <= 100.0
