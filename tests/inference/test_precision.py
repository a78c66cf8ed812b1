"""Inference precision: ``auto`` resolution (inference vs training), the option's validation, and what
runs in fp32 under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcl.errors import ConfigError
from tcl.eval import EvalConfig
from tcl.inference import PredictOptions
from tcl.model.masker import Masker
from tcl.runtime import cpu_has_native_bf16, resolve_precision
from tcl.train.config import PRECISIONS as TRAIN_PRECISIONS
from tcl.train.config import TrainConfig

CPU = torch.device("cpu")


def test_auto_is_bf16_for_inference_only_where_the_cpu_has_it():
    assert resolve_precision("auto", CPU, inference=True) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", CPU) == "fp32"  # training on CPU keeps fp32: `make run`'s numbers
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, CPU, inference=True) == explicit


def test_precision_options_are_validated():
    assert PredictOptions().precision == "fp32"  # the default stays exact
    assert PredictOptions(precision="auto").replace(kp_w=0.1).precision == "auto"
    with pytest.raises(ConfigError, match="precision: must be one of fp32, bf16, auto"):
        PredictOptions(precision="fp64")
    assert EvalConfig(precision="auto").precision == "auto"
    # the training config has its own tuple, unchanged
    assert TRAIN_PRECISIONS == ("auto", "fp32", "bf16", "fp16") and TrainConfig().precision == "auto"


def test_bf16_runs_the_networks_low_and_the_similarities_in_fp32(tiny_tcl):
    """With ``kp_w=1`` the masks are the KP branch's σ(10(s − 0.25)) of the MaskCLIP features: under bf16
    autocast they must equal that sigmoid computed in fp32 from the (bf16-computed) features."""
    torch.manual_seed(0)
    model = tiny_tcl.eval()
    image = torch.randn(1, 3, 64, 48)
    text = F.normalize(torch.randn(5, 32), dim=-1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        masks = model.generate_masks(image, text, apply_pamr=False, kp_w=1.0)
        tokens, grid = model.clip_features(image)
        dense = model.maskclip_dense(tokens, grid)
    assert masks.dtype == torch.float32 and dense.dtype == torch.bfloat16  # the network did run in bf16
    kp = torch.sigmoid((Masker.similarity(dense.float(), text) - 0.25) * 10.0)
    expected = F.interpolate(F.interpolate(kp, size=(16, 12), mode="bilinear"), size=(64, 48), mode="bilinear")
    assert (masks - expected).abs().max() < 1e-5
