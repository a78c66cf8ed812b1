"""The one inference-settings object: presets, validation, and every entry point's defaults taken from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tcl.errors import ConfigError
from tcl.inference.settings import DEFAULT_SETTINGS, PRESETS, InferenceSettings

REPO = Path(__file__).resolve().parents[2]
GEOMETRY = ("short_side", "long_side", "crop", "stride")


def test_presets_are_the_papers_settings():
    # kakaobrain/tcl bc2b551 configs/eval.yml (official) and README (the appendix's no-PAMR table);
    # geometry: segmentation/configs/_base_/datasets/*.py (448 short side, 2048 cap, 448/224 windows)
    assert dataclasses.asdict(PRESETS["official"]) == dict(pamr=True, bg_thresh=0.4, kp_w=0.3, template="custom",
                                                           short_side=448, long_side=2048, crop=448, stride=224)
    assert dataclasses.asdict(PRESETS["no_pamr"]) == {**dataclasses.asdict(PRESETS["official"]), "pamr": False,
                                                      "bg_thresh": 0.5}
    assert DEFAULT_SETTINGS is PRESETS["official"] and InferenceSettings() == DEFAULT_SETTINGS


@pytest.mark.parametrize(("changes", "message"), [
    ({"kp_w": 1.5}, "kp_w: must be in [0, 1], got 1.5"),
    ({"kp_w": "0.3"}, "kp_w: must be a number, got '0.3'"),
    ({"bg_thresh": -0.1}, "bg_thresh: must be in [0, 1] (masks are in [0, 1]), got -0.1"),
    ({"pamr": "yes"}, "pamr: must be true or false, got 'yes'"),
    ({"template": "nope"}, "template: must be one of "),
    ({"short_side": 8}, "short_side: must be >= 16, got 8"),
    ({"short_side": 64.0}, "short_side: must be an integer, got 64.0"),
    ({"long_side": 300}, "long_side: must be >= short_side (448), got 300"),
    ({"crop": 8, "stride": 4}, "crop: must be >= 16, got 8"),
    ({"stride": 449}, "stride: must be in [1, crop=448], got 449"),
    ({"stride": 0}, "stride: must be in [1, crop=448], got 0"),
])
def test_bad_values_are_one_line_config_errors_naming_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(DEFAULT_SETTINGS, **changes)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_no_background_is_a_setting():
    assert InferenceSettings(bg_thresh=None).bg_thresh is None


def test_settings_module_imports_without_torch():
    code = "import sys, tcl.inference.settings, tcl.eval.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_evaluation_settings_are_the_presets_with_the_configs_geometry():
    from tcl.eval.config import SETTINGS, EvalConfig, Protocol

    assert SETTINGS is PRESETS
    assert EvalConfig().settings() == DEFAULT_SETTINGS
    assert EvalConfig(setting="no_pamr").settings() == PRESETS["no_pamr"]
    # Protocol (the params.yaml geometry) has its own defaults; they must stay the shared ones.
    assert dataclasses.asdict(Protocol()) == {name: getattr(DEFAULT_SETTINGS, name) for name in GEOMETRY}
    tuned = EvalConfig(kp_w=0.1, template="simple").settings("synthetic")
    assert (tuned.kp_w, tuned.template, tuned.pamr, tuned.crop, tuned.stride) == (0.1, "simple", True, 96, 48)
    with pytest.raises(ConfigError, match="^stride: must be in"):  # the same checks as every other entry point
        EvalConfig(protocols=type(EvalConfig().protocols)(paper=Protocol(crop=64, stride=65))).settings()


@pytest.mark.parametrize("command", [["predict", "x.png", "--phrases", "a", "--checkpoint", "c"],
                                     ["serve-demo", "--checkpoint", "c"], ["demo"]])
def test_cli_defaults_are_the_shared_settings(command):
    from tcl.cli import _options, build_parser

    options = _options(build_parser().parse_args(command))
    assert options.settings == DEFAULT_SETTINGS and not options.sliding and options.window_batch == 1


def test_cli_flags_and_help_follow_the_settings_object(monkeypatch, capsys):
    """The argparse defaults and the numbers in --help are read from the object, not written again."""
    import tcl.inference.settings as settings
    from tcl.cli import _options, build_parser

    other = InferenceSettings(pamr=True, bg_thresh=0.25, kp_w=0.5, template="simple", short_side=320, crop=320,
                              stride=160)
    monkeypatch.setattr(settings, "DEFAULT_SETTINGS", other)
    parser = build_parser()
    assert _options(parser.parse_args(["predict", "x.png", "--phrases", "a", "--checkpoint", "c"])).settings == other
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for fragment in ("short side is this (the model's recorded settings, else 320)", "window size (the model's "
                     "recorded settings, else 320)", "window stride (the model's recorded settings, else 160)",
                     "KP branch (the model's recorded settings, else 0.5)", "recorded settings, else 0.25; the paper "
                     "uses 0.5 without PAMR)", "prompt-template set (the model's recorded settings, else simple;"):
        assert fragment in help_text


def test_predict_options_take_flat_names():
    from tcl.inference import PredictOptions

    assert PredictOptions().settings is DEFAULT_SETTINGS
    options = PredictOptions(short_side=64, bg_thresh=None, sliding=True, window_batch=4)  # README's way
    assert options.settings == dataclasses.replace(DEFAULT_SETTINGS, short_side=64, bg_thresh=None)
    assert (options.sliding, options.window_batch) == (True, 4)
    base = InferenceSettings(pamr=False, bg_thresh=0.5)
    assert PredictOptions(base, kp_w=0.5).settings == dataclasses.replace(base, kp_w=0.5)  # flat names change it
    changed = options.replace(kp_w=0.5, max_pixels=10)
    assert changed.settings == dataclasses.replace(options.settings, kp_w=0.5) and changed.max_pixels == 10
    assert options.settings.kp_w == 0.3 and dataclasses.replace(options, sliding=False).settings == options.settings
    assert PredictOptions.names() == {f.name for f in dataclasses.fields(InferenceSettings)} | {
        "sliding", "window_batch", "max_pixels", "precision"}
    with pytest.raises(TypeError, match="bg_treshold"):
        options.replace(bg_treshold=0.5)
    with pytest.raises(ConfigError, match="^settings: must be an InferenceSettings"):
        PredictOptions(settings={"pamr": True})


def test_pyfunc_defaults_and_saved_config():
    pytest.importorskip("mlflow")
    from tcl.inference import PredictOptions
    from tcl.serving import pyfunc

    params = {p.name: p.default for p in pyfunc.segmentation_signature().params.params}
    assert params == {"bg_thresh": 0.4, "background": True, "pamr": True, "kp_w": 0.3, "short_side": 448,
                      "sliding": False, "template": "custom", "label_format": "array"}
    no_bg = {p.name: p.default for p in pyfunc.segmentation_signature(PredictOptions(bg_thresh=None)).params.params}
    assert (no_bg["bg_thresh"], no_bg["background"]) == (DEFAULT_SETTINGS.bg_thresh, False)
    # The MLmodel's model_config keeps its keys (max_long_side included) and reads back to the same options.
    options = PredictOptions(short_side=64, long_side=512, sliding=True, max_pixels=1000)
    config = pyfunc._model_config(options)
    assert list(config) == ["short_side", "max_long_side", "pamr", "kp_w", "bg_thresh", "template", "sliding", "crop",
                            "stride", "window_batch", "max_pixels"]
    assert config["max_long_side"] == 512
    assert pyfunc._options_from_config({**config, "device": "cpu", "max_bytes": 10}) == options


def test_demo_page_and_requests_start_from_the_shared_settings():
    pytest.importorskip("fastapi")
    from tcl.inference import PredictOptions
    from tcl.serving.demo_app import _request_options, page_html

    server = types.SimpleNamespace(options=PredictOptions())
    html = page_html(server)
    assert re.search(r'id="bg_thresh" value="0.4"', html) and re.search(r'id="kp_w" value="0.3"', html)
    assert 'id="pamr" checked' in html and 'id="background" checked' in html
    assert _request_options(server, {}) == PredictOptions()
    no_bg_server = types.SimpleNamespace(options=PredictOptions(bg_thresh=None))
    assert 'value="0.4"' in page_html(no_bg_server) and 'id="background" checked' not in page_html(no_bg_server)
    assert _request_options(no_bg_server, {"background": True}).settings.bg_thresh == DEFAULT_SETTINGS.bg_thresh
    with pytest.raises(ConfigError, match=r"^kp_w: must be in \[0, 1\], got 7.0$"):
        _request_options(server, {"kp_w": 7})


def test_sliding_does_not_import_segment():
    """segment → sliding → scores, one way (the score→label helpers live in tcl.inference.scores)."""
    code = ("import sys, tcl.inference.sliding, tcl.inference.scores; "
            "assert 'tcl.inference.segment' not in sys.modules, 'sliding imports segment'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
