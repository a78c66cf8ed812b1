"""Bad input: missing data, corrupt files, unknown benchmarks, invalid parameters."""

from __future__ import annotations

import pytest

from tcl.config import ConfigError, from_dict
from tcl.eval import BENCHMARKS, EvalConfig, EvalDataError, UnknownBenchmarkError, evaluate_benchmark, get_benchmark

from .conftest import LAYOUTS, tiny_config, write_layout


def test_unknown_benchmark_lists_the_known_ones(oracle_for):
    with pytest.raises(UnknownBenchmarkError) as err:
        get_benchmark("pascal")
    assert str(err.value).startswith("unknown benchmark 'pascal' (known: voc, voc20, context")
    assert all(name in str(err.value) for name in BENCHMARKS)


def test_missing_data_root_names_the_layout_and_the_guide(tmp_path, oracle_for):
    with pytest.raises(EvalDataError) as err:
        evaluate_benchmark(oracle_for(LAYOUTS["voc"]), "context59", tiny_config(), root=tmp_path)
    message = str(err.value)
    assert "data/VOCdevkit/VOC2010/JPEGImages not found" in message
    assert "evaluate.data_roots.context" in message and "SegmentationClassContext" in message
    assert "https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html#pascal-context" \
        in message
    assert "\n" not in message


def test_missing_split_file_and_coco_object_labels(tmp_path, oracle_for):
    layout = write_layout(tmp_path, "voc")  # val split only
    with pytest.raises(EvalDataError, match=r"ImageSets/Segmentation/train.txt not found"):
        evaluate_benchmark(oracle_for(layout), "t_voc20", tiny_config(), root=tmp_path)
    write_layout(tmp_path, "coco_stuff")  # images exist, COCO-Object labels were never converted
    with pytest.raises(EvalDataError, match=r"coco_object/annotations/val2017 not found.*convert_coco_object.py"):
        evaluate_benchmark(oracle_for(layout), "coco_object", tiny_config(), root=tmp_path)


@pytest.mark.parametrize("which", ["image", "label map"])
def test_corrupt_file_is_named(tmp_path, oracle_for, which):
    layout = write_layout(tmp_path, "voc")
    pattern = layout.images if which == "image" else layout.labels
    bad = tmp_path / pattern.format(id="voc_val_001")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EvalDataError) as err:
        evaluate_benchmark(oracle_for(layout), "voc", tiny_config(), root=tmp_path)
    assert f"cannot read {which} {bad}" in str(err.value)


def test_label_map_of_another_size_is_named(tmp_path, oracle_for):
    from PIL import Image

    layout = write_layout(tmp_path, "voc")
    label = tmp_path / layout.labels.format(id="voc_val_000")
    Image.new("L", (16, 16)).save(label)
    with pytest.raises(EvalDataError, match=r"voc_val_000.png is 16x16, its image .* is 32x24"):
        evaluate_benchmark(oracle_for(layout), "voc", tiny_config(), root=tmp_path)


def test_empty_image_folder(tmp_path, oracle_for):
    (tmp_path / "data/cityscapes/leftImg8bit/val").mkdir(parents=True)
    (tmp_path / "data/cityscapes/gtFine/val").mkdir(parents=True)
    with pytest.raises(EvalDataError, match="no images found"):
        evaluate_benchmark(oracle_for(LAYOUTS["cityscapes"]), "cityscapes", tiny_config(), root=tmp_path)


@pytest.mark.parametrize(("data", "message"), [
    ({"setting": "paper"}, "evaluate.setting: must be one of official, no_pamr"),
    ({"bg_thresh": 1.5}, "evaluate.bg_thresh: must be in [0, 1]"),
    ({"template": "fancy"}, "evaluate.template: must be one of"),
    ({"benchmarks": ["voc", "pascal"]}, "evaluate.benchmarks: must name known benchmarks"),
    ({"protocols": {"paper": {"crop": 0}}}, "evaluate.protocols.paper.crop: must be >= 1"),
    ({"data_roots": {"kitti": "data/kitti"}}, "unknown key 'evaluate.data_roots.kitti'"),
    ({"precision": "int8"}, "evaluate.precision: must be one of fp32, bf16, fp16"),
    ({"window_batch": 0}, "evaluate.window_batch: must be >= 1"),
])
def test_invalid_parameters_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(EvalConfig, data, "evaluate")
    assert message in str(err.value)


def test_setting_switch_and_overrides():
    assert from_dict(EvalConfig, {}, "evaluate").settings().__dict__ == dict(
        pamr=True, bg_thresh=0.4, kp_w=0.3, template="custom", short_side=448, long_side=2048, crop=448, stride=224)
    synthetic = from_dict(EvalConfig, {}, "evaluate").settings("synthetic")  # the benchmark's window geometry
    assert (synthetic.short_side, synthetic.long_side, synthetic.crop, synthetic.stride) == (96, 439, 96, 48)
    no_pamr = from_dict(EvalConfig, {"setting": "no_pamr"}, "evaluate").settings()
    assert (no_pamr.pamr, no_pamr.bg_thresh, no_pamr.kp_w) == (False, 0.5, 0.3)
    custom = from_dict(EvalConfig, {"setting": "no_pamr", "bg_thresh": 0.45, "template": "simple"}, "evaluate")
    assert (custom.settings().bg_thresh, custom.settings().template) == (0.45, "simple")


def test_registry_matches_the_spec_table():
    with_bg = {name for name, b in BENCHMARKS.items() if b.with_background}
    assert with_bg == {"voc", "context", "coco_object", "synthetic_voc", "synthetic_coco_object", "t_synthetic_voc"}
    assert {b.split for b in BENCHMARKS.values() if b.training_split} == {
        "ImageSets/Segmentation/train.txt", "ImageSets/SegmentationContext/train.txt"}
    assert all(b.protocol == ("synthetic" if "synthetic" in b.name else "paper") for b in BENCHMARKS.values())
