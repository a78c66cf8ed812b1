"""Model sources of a benchmark run: which model, its checks before loading, baselines, the device."""

from __future__ import annotations

import pytest
import torch

from tcl.errors import ConfigError
from tcl.eval import EvalConfig
from tcl.eval.sources import ModelSource, baseline_config, check_source, load_source, resolve_device
from tests.conftest import TINY_CLIP


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "give a checkpoint, or a saved CLIP folder"),
    ({"checkpoint": "a.pt", "clip": "models/clip", "baseline": "step0"}, "give a checkpoint"),
    ({"clip": "models/clip"}, "needs a baseline: one of step0, maskclip, got None"),
    ({"checkpoint": "a.pt", "baseline": "step0"}, "not on a checkpoint"),
])
def test_a_source_is_one_model(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        ModelSource(**kwargs)


def test_files_are_checked_before_loading(tmp_path):
    with pytest.raises(ConfigError, match=f"checkpoint not found: {tmp_path / 'a.pt'}"):
        check_source(ModelSource(checkpoint=tmp_path / "a.pt"), TINY_CLIP)
    (tmp_path / "a.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--clip-weights: nowhere.pt not found"):
        check_source(ModelSource(checkpoint=tmp_path / "a.pt", clip_weights="nowhere.pt"), TINY_CLIP)
    with pytest.raises(ConfigError, match="no CLIP at"):
        check_source(ModelSource(clip=tmp_path / "clip", baseline="step0"), TINY_CLIP)


def test_baselines(tmp_path):
    from tcl.checkpoint import save_clip
    from tcl.model import TCLConfig, create_clip

    with pytest.raises(ConfigError, match="clip.json not found"):
        load_source(ModelSource(clip=tmp_path / "clip", baseline="step0"), TCLConfig(ie_freeze=2))
    torch.manual_seed(0)
    save_clip(tmp_path / "clip", create_clip(dict(TINY_CLIP)), dict(TINY_CLIP))
    loaded = load_source(ModelSource(clip=tmp_path / "clip", baseline="maskclip"), TCLConfig(ie_freeze=2))
    assert loaded.info == {"source": "baseline", "baseline": "maskclip", "clip": str(tmp_path / "clip")}
    assert not loaded.model.training and loaded.train_run is None
    # maskclip: the frozen CLIP's dense features alone (official TCL.kp_branch): KP weight 1, no PAMR
    settings = baseline_config(EvalConfig(), "maskclip").settings()
    assert (settings.pamr, settings.kp_w, settings.bg_thresh) == (False, 1.0, 0.4)
    assert baseline_config(EvalConfig(), "step0") == EvalConfig() == baseline_config(EvalConfig(), None)


def test_devices():
    assert resolve_device("auto", torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'nope' is not a torch device"):
        resolve_device("nope")
    with pytest.raises(ConfigError, match="cuda:99 is not available on this machine"):
        resolve_device("cuda:99")
