"""Sliding-window inference and scores → labels: window placement, batching equivalence, background rule, precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcl.inference.scores import labels_at, with_background
from tcl.inference.sliding import sliding_window_scores, sliding_window_scores_many, window_boxes, window_starts


@pytest.mark.parametrize(("length", "crop", "stride", "starts"), [
    (896, 448, 224, [0, 224, 448]),  # Cityscapes 2048x1024 -> 896x448: 3 windows
    (597, 448, 224, [0, 149]),  # a 375x500 VOC image at short side 448: last window at the border
    (448, 448, 224, [0]),
    (300, 448, 224, [0]),  # shorter than the crop: one shorter window
    (128, 96, 48, [0, 32]),
    (673, 448, 224, [0, 224, 225]),  # (673 - 448 + 223) // 224 + 1 = 3 windows, the last shifted to the border
])
def test_window_starts_follow_mmseg(length, crop, stride, starts):
    assert window_starts(length, crop, stride) == starts
    count = max(length - crop + stride - 1, 0) // stride + 1
    assert len(window_starts(length, crop, stride)) == count
    assert window_starts(length, crop, stride)[-1] + min(crop, length) == length  # last window at the border


def mmseg_slide_reference(model, image, text_emb, crop, stride, **kw):
    """The original per-window loop: one forward per window, padded sums and a count matrix."""
    _, _, height, width = image.shape
    preds = image.new_zeros((1, text_emb.shape[0], height, width))
    count = image.new_zeros((1, 1, height, width))
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out = model.generate_masks(image[:, :, y1:y2, x1:x2], text_emb, **kw)
            preds += F.pad(out, (x1, width - x2, y1, height - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.fixture()
def text_emb(tiny_tcl):
    return tiny_tcl.build_text_embedding(["cat", "dog", "grass", "sky"], template="simple")


def test_batched_windows_equal_one_by_one_and_the_original_loop(tiny_tcl, text_emb):
    torch.manual_seed(0)
    image = torch.randn(1, 3, 40, 72)
    kw = dict(apply_pamr=True, kp_w=0.3)
    one = sliding_window_scores(tiny_tcl.eval(), image, text_emb, crop=32, stride=16, bg_thresh=None,
                                window_batch=1, **kw)
    batched = sliding_window_scores(tiny_tcl, image, text_emb, crop=32, stride=16, bg_thresh=None,
                                    window_batch=16, **kw)
    reference = mmseg_slide_reference(tiny_tcl, image, text_emb, 32, 16, **kw)
    assert len(window_boxes(40, 72, 32, 16)) == 2 * 4
    assert torch.equal(one, reference)
    assert torch.allclose(batched, one, atol=1e-5)
    assert torch.equal(batched.argmax(0), one.argmax(0))


def test_windows_of_several_images_are_batched_together(tiny_tcl, text_emb):
    torch.manual_seed(1)
    images = [torch.randn(1, 3, 40, 48), torch.randn(1, 3, 32, 56), torch.randn(1, 3, 40, 48)]
    kw = dict(crop=32, stride=16, apply_pamr=False, kp_w=0.3, bg_thresh=0.4)
    together = sliding_window_scores_many(tiny_tcl.eval(), images, text_emb, window_batch=5, **kw)
    for image, scores in zip(images, together, strict=True):
        alone = sliding_window_scores(tiny_tcl, image, text_emb, window_batch=1, **kw)
        assert scores.shape == (5, *image.shape[-2:])  # 4 classes + background
        assert torch.allclose(scores, alone, atol=1e-5)
        assert torch.equal(scores.argmax(0), alone.argmax(0))


def test_background_wins_below_the_threshold_and_on_ties():
    scores = torch.tensor([[[0.30, 0.50, 0.40]], [[0.20, 0.45, 0.40]]])  # 2 classes, 1x3 image
    labels = labels_at(with_background(scores, 0.4), (1, 3))
    assert labels.tolist() == [[0, 1, 0]]  # all < 0.4 -> bg; 0.5 -> class 1 (index 1); tie at 0.4 -> bg
    assert labels_at(with_background(scores, None), (1, 3)).tolist() == [[0, 0, 0]]
    assert torch.equal(with_background(scores, None), scores)


def test_labels_at_equals_resizing_every_channel_at_once():
    torch.manual_seed(2)
    scores = torch.rand(7, 9, 13)
    full = F.interpolate(scores[None], size=(20, 31), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(labels_at(scores, (20, 31)), full)


def test_threshold_above_every_score_predicts_only_background(tiny_tcl, text_emb):
    image = torch.randn(1, 3, 32, 48)
    kw = dict(crop=32, stride=16, apply_pamr=True, kp_w=0.3, window_batch=4)
    high = sliding_window_scores(tiny_tcl.eval(), image, text_emb, bg_thresh=1.0, **kw)
    low = sliding_window_scores(tiny_tcl, image, text_emb, bg_thresh=0.0, **kw)
    assert (high.argmax(0) == 0).all()  # sigmoid masks (and their KP mix) stay below 1
    assert (low.argmax(0) > 0).all()  # ... and above 0


def test_bf16_autocast_stays_close_to_fp32(tiny_tcl, text_emb):
    torch.manual_seed(3)
    image = torch.randn(1, 3, 32, 48)
    kw = dict(crop=32, stride=16, apply_pamr=True, kp_w=0.3, bg_thresh=None, window_batch=4)
    fp32 = sliding_window_scores(tiny_tcl.eval(), image, text_emb, **kw)
    bf16 = sliding_window_scores(tiny_tcl, image, text_emb, precision="bf16", **kw)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05


def test_bad_window_batch_or_stride_is_an_error(tiny_tcl, text_emb):
    with pytest.raises(ValueError, match="window_batch"):
        sliding_window_scores(tiny_tcl, torch.zeros(1, 3, 16, 16), text_emb, crop=16, stride=8, apply_pamr=False,
                              kp_w=0.0, bg_thresh=None, window_batch=0)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_scores(tiny_tcl, torch.zeros(1, 3, 16, 16), text_emb, crop=8, stride=12, apply_pamr=False,
                              kp_w=0.0, bg_thresh=None)
