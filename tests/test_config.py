from __future__ import annotations

from pathlib import Path

import pytest

from tcl.config import ConfigError, Params, load_params
from tcl.model import TCLConfig

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_are_valid():
    params = load_params(PARAMS)
    assert isinstance(params, Params) and isinstance(params.model, TCLConfig)
    assert isinstance(params.clip.model, dict) and params.clip.weights is None


def test_defaults_and_int_to_float(tmp_path):
    params = load_params(write(tmp_path, "model:\n  tv_w: 2\n"))
    assert params.model.tv_w == 2.0 and isinstance(params.model.tv_w, float)
    assert params.model.ie_freeze == 11 and params.clip.model == "ViT-B-16-quickgelu"


@pytest.mark.parametrize(("text", "message"), [
    ("model:\n  ie_freez: 3\n", "unknown key 'model.ie_freez' (known keys here: area_w, decoder_stages"),
    ("modle: {}\n", "unknown key 'modle'"),
    ("model:\n  ie_freeze: three\n", "model.ie_freeze: expected int, got str 'three'"),
    ("model:\n  ie_freeze: true\n", "model.ie_freeze: expected int, got bool True"),
    ("model:\n  ie_freeze: 0\n", "model.ie_freeze: must be >= 1, got 0"),
    ("model:\n  gumbel_tau: -1\n", "model.gumbel_tau: must be > 0, got -1.0"),
    ("clip:\n  weights: 3\n", "clip.weights: expected str or NoneType, got int 3"),
    ("model: [1, 2]\n", "model: expected TCLConfig, got list"),
    ("model: {ie_freeze: 3\n", "not valid YAML at line"),
    ("data:\n  augment: heavy\n", "data.augment: must be one of paper, crop, none, got 'heavy'"),
    ("data:\n  sources:\n    - pattern: [x.tar]\n", "unknown key 'data.sources[0].pattern'"),
    ("data:\n  sources:\n    - patterns: x.tar\n", "data.sources[0].patterns: expected a list, got str"),
    ("data:\n  crop_scale_min: 1.5\n", "data.crop_scale_min: must be in (0, 1], got 1.5"),
])
def test_bad_parameters_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_data_sources_become_typed_tuples(tmp_path):
    params = load_params(write(tmp_path, "data:\n  sources:\n    - {patterns: ['a-{000000..000003}.tar'], "
                                         "weight: 2, name: a}\n    - {patterns: [b/]}\n  augment: crop\n"))
    first, second = params.data.sources
    assert first.patterns == ("a-{000000..000003}.tar",) and first.weight == 2.0 and first.name == "a"
    assert second.patterns == ("b/",) and second.weight == 1.0
    assert params.data.augment == "crop"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "absent.yaml")
