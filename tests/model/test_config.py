"""tcl.model.config checks CLIP config dicts against open_clip's key names without importing open_clip:
its lists must be the installed open_clip's."""

from __future__ import annotations

import dataclasses
import inspect

import open_clip
import pytest

from tcl.errors import ConfigError
from tcl.model.config import CLIP_CONFIG_KEYS, check_clip_config


def test_clip_config_keys_are_the_installed_open_clips():
    assert CLIP_CONFIG_KEYS[""] == {name for name in inspect.signature(open_clip.CLIP.__init__).parameters
                                    if name != "self"}
    assert CLIP_CONFIG_KEYS["vision_cfg"] == {f.name for f in dataclasses.fields(open_clip.model.CLIPVisionCfg)}
    assert CLIP_CONFIG_KEYS["text_cfg"] == {f.name for f in dataclasses.fields(open_clip.model.CLIPTextCfg)}


def test_an_unknown_key_is_refused_before_open_clip_would_raise_a_type_error(tiny_clip_config):
    bad = {**tiny_clip_config, "vision_cfg": {**tiny_clip_config["vision_cfg"], "widht": 64}}
    with pytest.raises(ConfigError, match=r"^vision_cfg\.widht: not an open_clip vision_cfg key"):
        check_clip_config(bad)
    with pytest.raises(TypeError):  # what the check spares the user
        open_clip.CLIP(**bad)
