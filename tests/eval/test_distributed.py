"""Evaluation split over 2 CPU processes (gloo) gives the single-process numbers on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tcl.eval import evaluate_benchmark

from ..conftest import TINY_CLIP
from .conftest import tiny_config, write_layout

# One window per forward pass in both runs, so every image is computed exactly alike whatever the
# split; what is under test is the split of the images and the gathering of the totals.
CONFIG = tiny_config(window_batch=1, image_batch=1)


def _model(weights: Path):
    from tcl import TCLConfig, create_tcl

    model = create_tcl(dict(TINY_CLIP), config=TCLConfig(ie_freeze=2))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def _worker(rank: int, world_size: int, root: str, weights: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=world_size)
    try:
        result = evaluate_benchmark(_model(Path(weights)), "voc", CONFIG, root=root, print_table=False)
        Path(root, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path, tiny_tcl):
    write_layout(tmp_path, "voc", images=3)  # 3 images: rank 0 gets two, rank 1 one
    weights = tmp_path / "weights.pt"
    torch.save(tiny_tcl.state_dict(), weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_benchmark(_model(weights), "voc", CONFIG, root=tmp_path, print_table=False)
    finally:
        torch.set_num_threads(threads)
    # fork: the children inherit the imported torch/mmseg instead of importing them again (~20 s on 2 cores)
    mp.start_processes(_worker, args=(2, str(tmp_path), str(weights)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["num_images"] == single["num_images"] == 3
        assert result["settings"]["world_size"] == 2
        for key in ("miou", "aacc", "macc", "per_class_iou", "per_class_acc"):
            assert result[key] == single[key], key
