from __future__ import annotations

import pytest
import torch

from tcl.model import WeightsError, create_clip, read_weights


def test_open_clip_state_dict_round_trip(tiny_clip_config, tmp_path):
    clip = create_clip(tiny_clip_config)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    loaded = create_clip(tiny_clip_config, tmp_path / "clip.pt")
    for key, value in clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.training


def test_weights_for_another_config_are_rejected(tiny_clip_config, tmp_path):
    other = dict(tiny_clip_config, vision_cfg=dict(tiny_clip_config["vision_cfg"], layers=2))
    torch.save(create_clip(other).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="does not fit the CLIP config"):
        create_clip(tiny_clip_config, tmp_path / "other.pt")


def test_torchscript_archives_are_read_through_the_jit_loader(tmp_path):
    module = torch.jit.script(torch.nn.Linear(3, 2))
    module.save(str(tmp_path / "scripted.pt"))
    state = read_weights(tmp_path / "scripted.pt")
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (2, 3)


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        read_weights(tmp_path / "absent.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="expected a dict of tensors"):
        read_weights(tmp_path / "list.pt")
