from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.checkpoint import CheckpointError
from tcl.errors import ConfigError
from tcl.inference import InputError, PredictOptions, Predictor, load_inference_model, write_outputs
from tests.inference.conftest import scene, write_tiny_checkpoint


def test_whole_image_prediction_with_and_without_background(tiny_tcl):
    predictor = Predictor(tiny_tcl, PredictOptions(short_side=64))
    image = scene()
    with_bg = predictor.segment(image, "red disc, blue square")
    assert with_bg.names == ["background", "red disc", "blue square"]
    assert with_bg.labels.shape == (72, 96) and with_bg.labels.max() < 3
    assert with_bg.scores.shape == (3, 64, 85)  # processing size: short side 64
    assert sum(with_bg.fractions().values()) == pytest.approx(1.0, abs=1e-5)
    no_bg = predictor.segment(image, ["red disc", "blue square"], PredictOptions(short_side=64, bg_thresh=None))
    assert no_bg.names == ["red disc", "blue square"]
    # Background is a constant channel: it only takes pixels where every phrase scores below it.
    keeps = with_bg.labels > 0
    assert np.array_equal(with_bg.labels[keeps] - 1, no_bg.labels[keeps])
    all_bg = predictor.segment(image, "red disc", PredictOptions(short_side=64, bg_thresh=1.0))
    assert set(np.unique(all_bg.labels)) == {0}


def test_text_embeddings_are_computed_once_per_phrase_list(tiny_tcl):
    predictor = Predictor(tiny_tcl, PredictOptions(short_side=32, pamr=False))
    first = predictor.text_embedding(["cat", "dog"], "custom")
    predictor.segment(scene(), ["cat", "dog"])
    predictor.segment(scene(seed=1), "cat, dog")
    assert predictor.text_embedding(["cat", "dog"], "custom") is first
    assert predictor.text_embedding(["cat", "dog"], "simple") is not first


def test_sliding_windows_use_the_evaluation_protocol(tiny_tcl):
    predictor = Predictor(tiny_tcl)
    image = scene(120, 64)
    whole = predictor.segment(image, "red, blue", PredictOptions(short_side=64))
    # One window covering the whole image is the whole-image pass.
    single = predictor.segment(image, "red, blue", PredictOptions(short_side=64, sliding=True, crop=128, stride=64))
    assert np.allclose(single.scores, whole.scores, atol=1e-5)
    assert np.array_equal(single.labels, whole.labels)
    windows = predictor.segment(image, "red, blue", PredictOptions(short_side=64, sliding=True, crop=64, stride=32))
    assert windows.labels.shape == (64, 120) and windows.scores.shape == (3, 64, 120)


def test_options_are_validated_with_one_line_errors():
    for kwargs, message in [({"kp_w": 1.5}, "kp_w: must be in"), ({"bg_thresh": -0.1}, "bg_thresh: must be in"),
                            ({"crop": 64, "stride": 0}, r"stride: must be in \[1, crop=64\], got 0"),
                            ({"template": "nope"}, "template: must be one of .*got 'nope'"),
                            ({"short_side": 4}, "short_side: must be >= 16"), ({"window_batch": 0}, "window_batch"),
                            ({"max_pixels": 0}, "max_pixels: must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            PredictOptions(**kwargs)


def test_predictor_refuses_large_images_and_empty_phrases(tiny_tcl):
    predictor = Predictor(tiny_tcl, PredictOptions(short_side=32, max_pixels=50 * 50))
    with pytest.raises(InputError, match=r"image too large \(96x72"):
        predictor.segment(scene(), "cat")
    with pytest.raises(InputError, match="no phrases"):
        predictor.segment(scene(40, 40), " ,")


def test_outputs_overlay_label_map_and_fractions(tiny_tcl, tmp_path):
    predictor = Predictor(tiny_tcl, PredictOptions(short_side=64))
    image = scene()
    result = predictor.segment(image, "red disc, blue square")
    paths = write_outputs(image, result, "scene", tmp_path / "out")
    labels = np.asarray(Image.open(paths["labels"]))
    assert labels.dtype == np.uint8 and np.array_equal(labels, result.labels)
    overlay = Image.open(paths["overlay"])
    assert overlay.width == 96 and overlay.height > 72  # legend below the image
    saved = json.loads(paths["fractions"].read_text())
    assert saved == {"classes": result.names, "fractions": result.fractions()}


def test_checkpoints_load_and_mismatches_are_reported(tmp_path, tiny_tcl):
    checkpoint = write_tiny_checkpoint(tmp_path)
    model = load_inference_model(checkpoint)
    assert not model.training
    image = scene()
    ours = Predictor(model, PredictOptions(short_side=64)).segment(image, "red, blue")
    reference = Predictor(tiny_tcl, PredictOptions(short_side=64)).segment(image, "red, blue")
    assert np.array_equal(ours.labels, reference.labels)  # tiny_tcl is the same seeded model
    # Same CLIP, another masker depth: the checkpoint does not fit.
    other = write_tiny_checkpoint(tmp_path / "other", ie_freeze=1)
    payload = torch.load(other, weights_only=True)
    payload["params"] = {"model": {"ie_freeze": 2}}
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="trained with another model config") as info:
        load_inference_model(tmp_path / "mismatch.pt")
    assert "\n" not in str(info.value)
