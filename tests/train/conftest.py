"""A tiny training project: a saved tiny CLIP, a few webdataset shards and a params.yaml for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_CLIP
from tests.data.test_stream import write_shards
from tests.params_file import write_params_file


def tiny_params(shard_folder: Path, **train) -> dict:
    """Parameters for a few CPU steps on the tiny CLIP (ie_freeze 2 of 3 blocks, 64-px images)."""
    return {
        "clip": {"model": TINY_CLIP},
        "model": {"ie_freeze": 2},
        "data": {"sources": [{"name": "tiny", "patterns": [str(shard_folder)]}], "batch_size": 4,
                 "num_workers": 1, "seed": 3, "shuffle_buffer": 16, "shuffle_initial": 4, "image_size": 64,
                 "augment": "crop", "crop_scale_min": 0.5},
        "train": {"steps": 6, "ust_steps": 3, "lr": 0.05, "min_lr": 0.001, "warmup_steps": 2, "scale_lr": False,
                  "log_every": 1, "image_every": 0, "checkpoint_every": 2, "val_every": 0, "val_benchmarks": [],
                  **train},
    }


def write_params(path: Path, params: dict) -> Path:
    """params.yaml with ``params`` (e.g. :func:`tiny_params`) merged into its sections."""
    return write_params_file(path, params)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tcl.checkpoint import save_clip
    from tcl.model import create_clip

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    return save_clip(folder, create_clip(TINY_CLIP), TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, "tiny", shards=4, per_shard=16)
    return folder
