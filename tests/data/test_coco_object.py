from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcl.data.coco_object import (
    COCO_OBJECT_LUT,
    THING_RAW_IDS,
    COCOObjectError,
    convert_coco_object,
    convert_label_map,
)

REPO = Path(__file__).resolve().parents[2]


def test_every_id_range_maps_as_specified():
    # things: COCO ids 1 (person) .. 90 (toothbrush) without the 10 unused ids → 1..80 in order
    assert len(THING_RAW_IDS) == 80 and THING_RAW_IDS[0] == 0 and THING_RAW_IDS[-1] == 89
    raw = np.array([[0, 1, 10, 12, 89, 91, 181, 255]], dtype=np.uint8)
    assert convert_label_map(raw).tolist() == [[1, 2, 11, 12, 80, 0, 0, 0]]
    assert set(COCO_OBJECT_LUT[91:182].tolist()) == {0}  # every stuff class is background
    assert sorted(COCO_OBJECT_LUT[list(THING_RAW_IDS)].tolist()) == list(range(1, 81))


@pytest.mark.parametrize("bad", [11, 90, 182, 254])
def test_unexpected_values_are_reported(bad):
    with pytest.raises(COCOObjectError, match=rf"x.png: unexpected label values \[{bad}\]"):
        convert_label_map(np.array([[0, bad]], dtype=np.uint8), "x.png")


def _make_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco_stuff164k"
    rng = np.random.default_rng(0)
    values = np.array([*THING_RAW_IDS, 91, 120, 181, 255], dtype=np.uint8)
    for split, count in (("train2017", 3), ("val2017", 2)):
        folder = root / "annotations" / split
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.choice(values, size=(12, 16))).save(folder / f"{i:012d}.png")
        # mmseg's own converted maps live beside the raw ones and must be ignored
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "000000000000_labelTrainIds.png")
    return root


def test_conversion_is_complete_and_idempotent(tmp_path):
    root = _make_root(tmp_path)
    out = tmp_path / "coco_object"
    counts = convert_coco_object(root, out, workers=2, expected_count=5)
    assert counts == {"converted": 5, "skipped": 0, "total": 5}
    raw = np.asarray(Image.open(root / "annotations" / "val2017" / "000000000001.png"))
    converted = np.asarray(Image.open(out / "annotations" / "val2017" / "000000000001_instanceTrainIds.png"))
    assert converted.dtype == np.uint8 and np.array_equal(converted, COCO_OBJECT_LUT[raw])
    assert convert_coco_object(root, out) == {"converted": 0, "skipped": 5, "total": 5}
    assert not list(out.rglob(".*.tmp"))


def test_wrong_root_and_count(tmp_path):
    with pytest.raises(COCOObjectError, match="annotations/train2017 not found"):
        convert_coco_object(tmp_path / "nowhere", tmp_path / "out")
    root = _make_root(tmp_path)
    with pytest.raises(COCOObjectError, match="found 5 raw label maps .* expected 123287"):
        convert_coco_object(root, tmp_path / "out", expected_count=123287)


def test_stage_command_line(tmp_path):
    root = _make_root(tmp_path)
    script = str(REPO / "stages" / "convert_coco_object.py")
    done = subprocess.run([sys.executable, script, "--root", str(root), "--out", str(tmp_path / "o"),
                           "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "converted 5, already done 0, total 5" in done.stdout
    bad = subprocess.run([sys.executable, script, "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("convert_coco_object: error: ")
    assert "Traceback" not in bad.stderr
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--expected-count" in helped.stdout
