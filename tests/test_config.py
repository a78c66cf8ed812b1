from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tcl.config import ConfigError, Params, from_dict, load_params
from tcl.model import TCLConfig
from tests.params_file import write_params_file

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_are_valid():
    params = load_params(PARAMS)
    assert isinstance(params, Params) and isinstance(params.model, TCLConfig)
    assert isinstance(params.clip.model, dict) and params.clip.weights is None


def test_the_file_holds_every_value_and_code_may_use_defaults(tmp_path):
    params = load_params(write_params_file(tmp_path / "params.yaml", {"model": {"tv_w": 2}}))
    assert params.model.tv_w == 2.0 and isinstance(params.model.tv_w, float)
    assert params.model.ie_freeze == 3  # params.yaml's, not TCLConfig's 11
    # configs built in code (library callers, tests) still take the dataclass defaults
    built = from_dict(Params, {"model": {"tv_w": 2}})
    assert built.model.ie_freeze == 11 and built.clip.model == "ViT-B-16-quickgelu"


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
    try:  # the change, merged into the project's params.yaml (unless it is not YAML at all)
        path = write_params_file(tmp_path / "params.yaml", yaml.safe_load(text))
    except yaml.YAMLError:
        path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_data_sources_become_typed_tuples(tmp_path):
    params = load_params(write_params_file(tmp_path / "params.yaml", {"data": {"sources": [
        {"patterns": ["a-{000000..000003}.tar"], "weight": 2, "name": "a"}, {"patterns": ["b/"]}], "augment": "crop"}}))
    first, second = params.data.sources
    assert first.patterns == ("a-{000000..000003}.tar",) and first.weight == 2.0 and first.name == "a"
    assert second.patterns == ("b/",) and second.weight == 1.0
    assert params.data.augment == "crop"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "absent.yaml")
