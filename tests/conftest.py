"""Shared fixtures: tiny open_clip configs and random weights in the official layouts."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "fixtures"

# The threads of a 2-core CI machine: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=64, patch_size=16, width=64, head_width=16, layers=3),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
    quick_gelu=True,
)


def read_key_listing(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (DATA / name).read_text().splitlines():
        if line.strip():
            key, _, shape = line.partition("\t")
            shapes[key] = tuple(int(s) for s in shape.split(",")) if shape.strip() else ()
    return shapes


def random_weight(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random values of a realistic scale for a CLIP/TCL parameter, chosen by its name."""
    def randn(std):
        return torch.randn(shape, generator=generator) * std

    leaf = key.rsplit(".", 1)[-1]
    if key.endswith("logit_scale"):
        return torch.tensor(math.log(1 / 0.07))
    if key.endswith("sim2mask.w"):
        return torch.tensor(20.0)
    if key.endswith("sim2mask.b"):
        return torch.tensor(-0.5)
    if key.endswith("gate.gate"):
        return torch.rand((), generator=generator) * 0.5 + 0.3
    if leaf == "weight" and len(shape) == 1:  # LayerNorm
        return 1.0 + randn(0.1)
    if leaf.endswith("bias"):
        return randn(0.02)
    if "positional_embedding" in key or "class_embedding" in key:
        return randn(0.1)
    if "token_embedding" in key:
        return randn(0.02)
    fan_in = shape[0] if leaf in ("proj", "text_projection") else math.prod(shape[1:])
    return randn(fan_in ** -0.5)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int, fp16_values: bool = False):
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        value = random_weight(key, shape, generator).float()
        out[key] = value.half().float() if fp16_values else value
    return out


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CLIP.items()}


@pytest.fixture()
def tiny_tcl(tiny_clip_config):
    from tcl import TCLConfig, create_tcl

    torch.manual_seed(0)
    return create_tcl(tiny_clip_config, config=TCLConfig(ie_freeze=2))
