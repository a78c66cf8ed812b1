"""The pipeline's sections of params.yaml, overrides (-S) and the paper setting: validated before anything runs."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipelines.overrides import (
    apply_overrides,
    load_overrides_file,
    parse_overrides,
    to_dvc_set_args,
    validate_overrides,
    write_overrides,
)
from tcl.config import ConfigError, load_params

from .conftest import REPO


@pytest.fixture()
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def test_default_params_describe_the_synthetic_pipeline():
    params = load_params(REPO / "params.yaml")
    assert list(params.download.sources) == ["synthetic"]
    source = params.download.sources["synthetic"]
    assert source.serve and source.out == "data/synthetic/shards"
    assert params.data.sources[0].patterns == (source.out,)  # training reads what the download stage writes
    assert set(params.pipeline.baselines) == {"step0", "maskclip"}
    conversion = params.pipeline.coco_object["synthetic"]
    assert conversion.out == params.evaluate.data_roots.synthetic_coco_object
    assert conversion.root == params.evaluate.data_roots.synthetic_coco_stuff
    assert all(name.startswith("synthetic_") for name in params.evaluate.benchmarks)


def test_paper_setting_validates_and_switches_everything_that_differs(params_file):
    paper = load_overrides_file(REPO / "configs/paper.yaml")
    params = validate_overrides(params_file, paper)
    assert params.clip.model == "ViT-B-16-quickgelu" and params.clip.weights == "openai"
    assert params.model.ie_freeze == 11
    assert list(params.download.sources) == ["cc3m", "cc12m"]  # replaced, not merged with synthetic
    assert params.data.image_size == 224 and params.data.augment == "paper"
    assert params.train.steps == 50000
    assert len(params.evaluate.benchmarks) == 8 and params.evaluate.setting == "official"
    # and it survives DVC's own -S writer unchanged
    assert write_overrides(params_file, paper) == params == load_params(params_file)


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "unknown key 'train.stepz'"),
    ("download.sources.synthetic.threads=0", "download.sources.synthetic.threads: must be >= 1"),
    ("download.sources.synthetic.processes=two", "download.sources.synthetic.processes: expected int"),
    ("download.sources.synthetic.root=''", "download.sources.synthetic.root: must be set"),
    ("download.sources={'bad name': {root: a, list: b, out: c}}", "names may hold only letters"),
    ("download.sources={}", "download.sources: at least one source"),
    ("pipeline.baselines=[step0, step0]", "pipeline.baselines: one or both of step0, maskclip"),
    ("pipeline.baselines=[]", "pipeline.baselines: one or both of step0, maskclip"),
    ("pipeline.nproc_per_node=0", "pipeline.nproc_per_node: must be >= 1"),
    ("pipeline.coco_object.synthetic.out=''", "pipeline.coco_object.synthetic.out: must be set"),
    ("synthetic.pairs=0", "synthetic.pairs: must be >= 1"),  # the one style: "<key>: ..."
    ("train.steps=-1", "train.steps: must be >= 1"),
])
def test_bad_values_fail_in_one_line_naming_the_key(params_file, override, message):
    with pytest.raises(ConfigError) as caught:
        validate_overrides(params_file, parse_overrides([override]))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_override_values_are_yaml_and_replace_whole_mappings():
    changes = parse_overrides(["train.steps=200", "clip.weights=null", "prepare_clip.lr=1e-5", "a.b=[1, x]",
                               "+c.d=on"])
    assert changes == [("train.steps", 200), ("clip.weights", None), ("prepare_clip.lr", 1e-5), ("a.b", [1, "x"]),
                       ("c.d", True)]
    data = {"download": {"sources": {"synthetic": {"root": "r"}}}}
    out = apply_overrides(data, parse_overrides(["download.sources={cc3m: {root: x}}"]))
    assert out == {"download": {"sources": {"cc3m": {"root": "x"}}}} and "synthetic" in data["download"]["sources"]
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["train.steps"])


def test_overrides_are_written_as_dvc_exp_run_would_and_keep_the_file_valid(params_file):
    tricky = "it's a\\b {000..009}.tar"
    changes = [("prepare_clip.steps", 7), ("download.sources.synthetic.retries", 1), ("prepare_clip.lr", 2e-05),
               ("evaluate.benchmarks", ["synthetic_voc"]),
               ("download.sources", {"web": {"root": "data/web", "list": tricky, "out": "data/web_shards",
                                             "extra": {"min_image_size": 64}}})]
    before = load_params(params_file)
    args = to_dvc_set_args(params_file, changes)
    # "+": not in the file yet (an optional key of a source entry)
    assert args[:4] == ["-S", "prepare_clip.steps=7", "-S", "+download.sources.synthetic.retries=1"]
    assert "~download.sources" in args  # a mapping is replaced, not merged
    params = write_overrides(params_file, changes)
    assert load_params(params_file) == params != before
    assert params.download.sources["web"].list == tricky and params.prepare_clip.lr == 2e-05
    with pytest.raises(ConfigError, match="prepare_clip.steps: must be >= 1"):
        write_overrides(params_file, [("prepare_clip.steps", 0)])
    assert load_params(params_file) == params  # a rejected override leaves the file alone


def test_overrides_file_holds_dotted_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train.steps: 5\nclip.weights: openai\n")
    assert load_overrides_file(good) == [("train.steps", 5), ("clip.weights", "openai")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(["train.steps=5"]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_overrides_file(bad)
