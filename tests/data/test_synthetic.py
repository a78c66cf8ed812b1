from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcl.data.coco_object import THING_RAW_IDS, convert_coco_object
from tcl.data.synthetic import (
    COCO_STUFF_DIR,
    CORPUS_DIR,
    KIND_NAMES,
    MANIFEST_FILE,
    OBJECT_KINDS,
    PAIRS_FILE,
    STUFF_KINDS,
    VOC_BOUNDARY,
    VOC_DIR,
    SyntheticError,
    SyntheticParams,
    benchmark_ids,
    coco_stuff_label_maps,
    generate_synthetic,
    measure_throughput,
    named_kinds,
    render_scene,
    voc_label_map,
)
from tcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "stages" / "synthetic.py"
SMALL = SyntheticParams(seed=3, pairs=40, image_size=64, eval_image_size=96, val_images=10, train_images=4)
TINY = SyntheticParams(seed=1, pairs=6, image_size=48, eval_image_size=48, val_images=2, train_images=1)
MIN_AREA = 1 / 16


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "world"
    result = generate_synthetic(out, SMALL, workers=2)
    assert not result["skipped"]
    return out


# --- vocabulary --------------------------------------------------------------------------------

def test_vocabulary_resolves_by_name_in_both_benchmarks():
    ids = benchmark_ids()
    assert len(OBJECT_KINDS) == 8 and len(STUFF_KINDS) == 6
    # independent check against the published ids (COCO category id - 1; VOC indices)
    assert ids.coco_raw == {"car": 2, "bus": 5, "boat": 8, "bottle": 43, "cat": 16, "dog": 17, "bird": 15,
                            "sheep": 19, "grass": 123, "sky": 156, "sand": 153, "sea": 154, "wall": 170, "road": 148}
    assert ids.voc == {"car": 7, "bus": 6, "boat": 4, "bottle": 5, "cat": 8, "dog": 12, "bird": 3, "sheep": 17}
    for kind in KIND_NAMES:
        assert ids.coco_raw[kind] in THING_RAW_IDS
        assert ids.coco_train[kind] == THING_RAW_IDS.index(ids.coco_raw[kind])
    for stuff in STUFF_KINDS:
        assert 91 <= ids.coco_raw[stuff.name] <= 181
        assert ids.coco_train[stuff.name] == 80 + ids.coco_raw[stuff.name] - 91
    lut = np.array(ids.coco_raw_to_train)
    assert sorted(lut[lut != 255].tolist()) == list(range(171))


# --- scenes and captions -----------------------------------------------------------------------

def test_scenes_are_pure_functions_of_seed_stream_index():
    a, b = render_scene(5, 0, 17, 64), render_scene(5, 0, 17, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert a.caption == b.caption and a.objects == b.objects
    assert not np.array_equal(a.image, render_scene(6, 0, 17, 64).image)
    assert not np.array_equal(a.image, render_scene(5, 1, 17, 64).image)


def _noun_pattern():
    """kind -> regex matching '<count word> [adjective] <noun>' for any of the kind's nouns."""
    patterns = {}
    for kind in OBJECT_KINDS:
        nouns = "|".join(re.escape(n) for pair in kind.nouns for n in pair)
        patterns[kind.name] = re.compile(rf"\b(a|an|two|three)\s+(?:[a-z]+\s+)?({nouns})\b", re.IGNORECASE)
    return patterns


def test_captions_name_exactly_the_kinds_present_with_counts():
    patterns = _noun_pattern()
    every_noun = {n for kind in OBJECT_KINDS for pair in kind.nouns for n in pair}
    for stuff in STUFF_KINDS:  # background phrases must never name an object kind
        assert not every_noun & set(" ".join(stuff.where + stuff.scene).split())
    captions, mentioned_stuff = set(), 0
    for index in range(400):
        scene = render_scene(0, 0, index, 48)
        assert 1 <= len(scene.objects) <= 3
        counts = Counter(scene.objects)
        found = {}
        for kind, pattern in patterns.items():
            hits = pattern.findall(scene.caption)
            if hits:
                assert len(hits) == 1, scene.caption
                found[kind] = {"a": 1, "an": 1, "two": 2, "three": 3}[hits[0][0].lower()]
        assert found == dict(counts), (scene.caption, scene.objects)
        assert "\t" not in scene.caption and "\n" not in scene.caption
        for stuff in STUFF_KINDS:
            if any(phrase in scene.caption.lower() for phrase in stuff.where + stuff.scene):
                assert stuff.name in scene.stuffs, (scene.caption, scene.stuffs)
                mentioned_stuff += 1
        captions.add(scene.caption.lower().rstrip("."))
    assert len(captions) > 250  # varied, not a handful of templates
    assert 100 < mentioned_stuff < 350  # the background is named sometimes, not always


def test_named_kinds_reads_back_what_a_caption_names():
    for index in range(400):
        scene = render_scene(0, 0, index, 48)
        named = named_kinds(scene.caption)
        stuff_names = {s.name for s in STUFF_KINDS}
        assert named - stuff_names == set(scene.objects), scene.caption  # every object kind, and no other
        stuff = {s.name for s in STUFF_KINDS if any(p in scene.caption.lower() for p in s.where + s.scene)}
        assert named & stuff_names == stuff, scene.caption  # the background exactly when a phrase names it
    assert named_kinds("Two puppies and a sailboat on the water.") == {"dog", "boat", "sea"}
    assert named_kinds("a white glass") == set()  # adjectives name nothing ("white": a boat or a sheep)


def test_objects_are_large_after_occlusion_and_rim():
    ids = benchmark_ids()
    for index in range(150):
        scene = render_scene(2, 2, index, 96)
        area = scene.instances.size
        voc = voc_label_map(scene, ids)
        raw, train = coco_stuff_label_maps(scene, ids)
        for number in range(1, len(scene.objects) + 1):
            assert (scene.instances == number).sum() >= MIN_AREA * area
        for kind in set(scene.objects):
            assert (voc == ids.voc[kind]).sum() >= MIN_AREA * area  # even with the 255 rim carved out
            assert (raw == ids.coco_raw[kind]).sum() >= MIN_AREA * area
        assert np.array_equal(voc[scene.instances == 0], np.zeros((scene.instances == 0).sum(), np.uint8))


# --- generated layouts -------------------------------------------------------------------------

def test_corpus_pairs_file(world):
    lines = (world / CORPUS_DIR / PAIRS_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "caption\turl"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == SMALL.pairs and all(len(r) == 2 for r in rows)
    for caption, url in rows:
        assert caption and not url.startswith("/") and ".." not in url
        with Image.open(world / CORPUS_DIR / url) as image:
            assert image.format == "JPEG" and image.size == (SMALL.image_size, SMALL.image_size)
    assert len(list((world / CORPUS_DIR).rglob("*.jpg"))) == SMALL.pairs  # nothing else to serve


def test_label_values_lie_in_their_id_spaces(world):
    ids = benchmark_ids()
    voc_ok = {0, VOC_BOUNDARY, *ids.voc.values()}
    names = (world / VOC_DIR / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(names) == SMALL.val_images
    for name in names:
        with Image.open(world / VOC_DIR / "SegmentationClass" / f"{name}.png") as png:
            assert png.mode == "P"
            values = set(np.unique(np.asarray(png)).tolist())
        assert values <= voc_ok and VOC_BOUNDARY in values and values - {0, VOC_BOUNDARY}
    thing_raw = {ids.coco_raw[k] for k in KIND_NAMES}
    stuff_raw = {ids.coco_raw[s.name] for s in STUFF_KINDS}
    lut = np.array(ids.coco_raw_to_train, np.uint8)
    for split, count in (("train2017", SMALL.train_images), ("val2017", SMALL.val_images)):
        raws = sorted((world / COCO_STUFF_DIR / "annotations" / split).glob("*[0-9].png"))
        assert len(raws) == count
        for path in raws:
            assert re.fullmatch(r"\d{12}\.png", path.name)
            assert (world / COCO_STUFF_DIR / "images" / split / f"{path.stem}.jpg").is_file()
            raw = np.asarray(Image.open(path))
            train = np.asarray(Image.open(path.with_name(f"{path.stem}_labelTrainIds.png")))
            values = set(np.unique(raw).tolist())
            assert values <= thing_raw | stuff_raw and values & thing_raw and values & stuff_raw
            assert np.array_equal(train, lut[raw]) and train.max() < 171


def test_mmseg_datasets_read_the_layouts_unchanged(world):
    from tcl.compat.mmcv_ops import ensure_mmseg_importable

    ensure_mmseg_importable()
    from mmseg.datasets import COCOStuffDataset, PascalVOCDataset
    from mmseg.datasets.transforms import LoadAnnotations

    ids = benchmark_ids()
    voc_prefix = dict(img_path="JPEGImages", seg_map_path="SegmentationClass")
    for split, count in (("val", SMALL.val_images), ("train", SMALL.train_images)):
        voc = PascalVOCDataset(data_root=str(world / VOC_DIR), data_prefix=voc_prefix,
                               ann_file=f"ImageSets/Segmentation/{split}.txt", pipeline=[LoadAnnotations()])
        assert len(voc) == count
    sample = voc[0]
    values = set(np.unique(sample["gt_seg_map"]).tolist())
    assert values <= {0, VOC_BOUNDARY, *ids.voc.values()} and len(values) >= 3
    assert np.array_equal(sample["gt_seg_map"], np.asarray(Image.open(sample["seg_map_path"])))

    coco = COCOStuffDataset(data_root=str(world / COCO_STUFF_DIR),
                            data_prefix=dict(img_path="images/val2017", seg_map_path="annotations/val2017"),
                            pipeline=[LoadAnnotations()])
    assert len(coco) == SMALL.val_images
    sample = coco[0]
    assert sample["seg_map_path"].endswith("_labelTrainIds.png")
    values = set(np.unique(sample["gt_seg_map"]).tolist())
    assert values <= set(ids.coco_train.values()) and any(v < 80 for v in values) and any(v >= 80 for v in values)


def test_coco_object_conversion_of_generated_maps(world, tmp_path):
    counts = convert_coco_object(world / COCO_STUFF_DIR, tmp_path / "coco_object",
                                 expected_count=SMALL.train_images + SMALL.val_images)
    assert counts["converted"] == SMALL.train_images + SMALL.val_images
    ids = benchmark_ids()
    allowed = {0} | {THING_RAW_IDS.index(ids.coco_raw[k]) + 1 for k in KIND_NAMES}
    seen = set()
    for path in (tmp_path / "coco_object").rglob("*.png"):
        seen |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert seen <= allowed and 0 in seen and max(seen) <= 80


# --- determinism, atomicity, no-op ------------------------------------------------------------

def test_outputs_are_byte_identical_for_a_seed_whatever_the_workers(world, tmp_path):
    generate_synthetic(tmp_path / "again", SMALL, workers=1)
    assert _tree_digest(tmp_path / "again") == _tree_digest(world)
    other = SyntheticParams(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    generate_synthetic(tmp_path / "other", other, workers=1)
    mine, theirs = _tree_digest(world), _tree_digest(tmp_path / "other")
    differ = [k for k in mine if k.endswith(".jpg") and mine[k] != theirs.get(k)]
    assert len(differ) == len([k for k in mine if k.endswith(".jpg")])


def test_rerun_is_a_noop_and_new_parameters_replace_atomically(tmp_path):
    out = tmp_path / "w"
    generate_synthetic(out, TINY)
    stamp = (out / MANIFEST_FILE).stat().st_mtime_ns
    assert generate_synthetic(out, TINY)["skipped"]
    assert (out / MANIFEST_FILE).stat().st_mtime_ns == stamp

    (out / CORPUS_DIR / "images" / "00000" / "00000003.jpg").unlink()  # damaged output: regenerated
    assert not generate_synthetic(out, TINY)["skipped"]
    assert (out / CORPUS_DIR / "images" / "00000" / "00000003.jpg").is_file()

    bigger = SyntheticParams(**{**TINY.__dict__, "pairs": 9})

    def interrupt(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(out, bigger, progress=interrupt)
    assert json.loads((out / MANIFEST_FILE).read_text())["params"]["pairs"] == TINY.pairs  # old output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary folder left behind

    assert not generate_synthetic(out, bigger)["skipped"]
    assert json.loads((out / MANIFEST_FILE).read_text())["params"]["pairs"] == 9
    assert len((out / CORPUS_DIR / PAIRS_FILE).read_text().splitlines()) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_refuses_foreign_outputs_and_bad_parameters(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SyntheticError, match="holds no synthetic-world manifest.json"):
        generate_synthetic(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    for bad, message in ((dict(pairs=0), "pairs: must be >= 1"), (dict(image_size=16), "image_size: must be within"),
                         (dict(max_objects=4), "max_objects: must be 1, 2 or 3"),
                         (dict(min_object_frac=0.5), "min_object_frac: must be within"),
                         (dict(seed=1.5), "seed: must be an integer"), (dict(pairs=True), "pairs: must be an integer")):
        with pytest.raises(ConfigError, match=message):  # built in code: checked on construction
            SyntheticParams(**bad)


def test_measure_throughput():
    result = measure_throughput(pairs=30, image_size=64)
    assert result["pairs"] == 30 and result["pairs_per_s"] > 0


# --- command line ------------------------------------------------------------------------------

def _stage_main():
    spec = importlib.util.spec_from_file_location("stage_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_stage_command_line_help_and_one_line_errors(tmp_path):
    helped = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "--pairs" in helped.stdout and "--measure" in helped.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "o"), "--pairs", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.strip() and "lbumentations" not in line
             and "check_for_updates" not in line]
    assert lines == ["synthetic: error: pairs: must be >= 1, got 0"]


def test_stage_main_runs_and_reruns(tmp_path, capsys):
    main = _stage_main()
    with pytest.raises(SystemExit) as exited:
        main(["--bogus"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "synthetic: error: unrecognized arguments: --bogus (see --help)"
    args = ["--out", str(tmp_path / "w"), "--seed", "1", "--pairs", "6", "--image-size", "48", "--eval-image-size",
            "48", "--val-images", "2", "--train-images", "1", "--workers", "1"]
    assert main(args) == 0
    assert "wrote 6 pairs" in capsys.readouterr().out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["--out", str(tmp_path), "--pairs", "3"]) == 2
    assert capsys.readouterr().err.strip().startswith("synthetic: error: ")


def test_synthetic_benchmarks_prompt_with_the_classes_the_world_draws(world):
    """Like a real benchmark, each synthetic twin's vocabulary is the classes its images contain; mmseg
    relabels the ground truth to that vocabulary without losing a pixel (no other class occurs)."""
    from tcl.eval import get_benchmark
    from tcl.eval.config import DataRoots, Protocol
    from tcl.eval.datasets import EvalSamples, build_dataset, class_names

    roots = DataRoots(synthetic_voc=str(world / VOC_DIR), synthetic_coco_stuff=str(world / COCO_STUFF_DIR))
    protocol = Protocol(short_side=96, long_side=439, crop=96, stride=48)
    kinds = {kind.voc_name for kind in OBJECT_KINDS}
    for name, expected, with_bg in (
            ("synthetic_voc", kinds, True), ("synthetic_voc20", kinds, False),
            ("synthetic_coco_stuff", {k.coco_name for k in OBJECT_KINDS} | {s.coco_stuff_name for s in STUFF_KINDS},
             False)):
        dataset = build_dataset(get_benchmark(name), roots, protocol)
        names = class_names(dataset, with_bg)
        assert set(names) == expected and len(names) == len(expected), name
        classes = list(dataset.metainfo["classes"])
        for index in range(len(dataset)):
            item = EvalSamples(dataset, [index])[0]
            raw = np.asarray(Image.open(dataset.get_data_info(index)["seg_map_path"]))
            values = set(np.unique(item["gt"]).tolist()) - {255}
            assert values <= set(range(len(classes)))
            if name == "synthetic_voc":  # every pixel keeps its class *name*; the same pixels stay ignored
                all_classes = type(dataset).METAINFO["classes"]
                assert np.array_equal(item["gt"] == 255, raw == VOC_BOUNDARY)
                for value in set(np.unique(raw).tolist()) - {VOC_BOUNDARY}:
                    assert set(np.unique(item["gt"][raw == value]).tolist()) == \
                        {classes.index(all_classes[value])}
