"""The background-threshold selection protocol: what is chosen where, fixed values, reading a choice back."""

from __future__ import annotations

import json

import pytest

from tcl.errors import ConfigError
from tcl.eval import EvalConfig, get_benchmark
from tcl.eval.thresholds import ThresholdChoice, fixed_record, plan_bg_thresh, read_bg_thresh


def test_nothing_to_choose_without_a_record_file(tmp_path):
    assert plan_bg_thresh(EvalConfig(), None) == ThresholdChoice()
    assert ThresholdChoice().to_sweep == [] and ThresholdChoice().written == []


def test_chosen_on_the_configured_training_split_or_the_given_one(tmp_path):
    choice = plan_bg_thresh(EvalConfig(bg_thresh_split="t_synthetic_voc"), tmp_path / "b.json")
    assert choice.split == get_benchmark("t_synthetic_voc") and choice.fixed is None
    assert choice.to_sweep == [choice.split] and choice.written == [tmp_path / "b.json"]
    assert plan_bg_thresh(EvalConfig(), tmp_path / "b.json", "voc").split.name == "voc"


def test_a_fixed_threshold_is_recorded_without_scoring(tmp_path):
    choice = plan_bg_thresh(EvalConfig(bg_thresh=0.4), tmp_path / "b.json")
    assert choice.fixed == 0.4 and choice.to_sweep == [] and choice.written == [tmp_path / "b.json"]
    assert fixed_record(choice) == {"benchmark": "t_synthetic_voc", "candidates": {}, "best": 0.4, "fixed": True}


def test_a_split_without_background_is_refused_before_scoring(tmp_path):
    with pytest.raises(ConfigError, match="'voc20' has no background class"):
        plan_bg_thresh(EvalConfig(), tmp_path / "b.json", "voc20")


def test_read_back_as_a_number_or_a_record(tmp_path):
    assert read_bg_thresh("0.45") == 0.45
    (tmp_path / "sweep.json").write_text(json.dumps({"candidates": {"0.5": 1.0}, "best": 0.5}))
    assert read_bg_thresh(str(tmp_path / "sweep.json")) == 0.5
    (tmp_path / "list.json").write_text("[1, 2]")
    for value, message in [("high", "'high' is neither a number nor a file"), (str(tmp_path / "list.json"),
                           "holds no 'best' threshold"), ("1.5", r"must be in \[0, 1\], got 1.5")]:
        with pytest.raises(ConfigError, match=message):
            read_bg_thresh(value)
