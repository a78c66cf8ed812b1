"""Class scores → labels: the threshold sweep's one-resize path against the per-threshold reference."""

from __future__ import annotations

import math

import pytest
import torch

from tcl.inference.scores import labels_at, labels_at_thresholds, with_background

THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def _reference(scores, size, thresholds):
    return [labels_at(with_background(scores, t), size) for t in thresholds]


@pytest.mark.parametrize("size", [(96, 96), (37, 53), (5, 4)])
def test_the_same_labels_as_one_resize_per_threshold_ties_included(size):
    generator = torch.Generator().manual_seed(0)
    # scores on a 0.05 grid, as the thresholds: ties between classes and with the background happen
    scores = torch.randint(4, 17, (6, 12, 12), generator=generator).float() * 0.05
    got = labels_at_thresholds(scores, size, THRESHOLDS)
    want = _reference(scores, size, THRESHOLDS)
    assert len(got) == len(THRESHOLDS)
    for thresh, a, b in zip(THRESHOLDS, got, want, strict=True):
        assert torch.equal(a, b), thresh
    assert len({tuple(a.flatten().tolist()) for a in got}) > 3  # the thresholds do change the labels


def test_nan_and_infinite_channels_and_no_threshold():
    scores = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1))
    scores[0] = math.nan  # a NaN channel is never chosen, as when the scan starts from the background
    scores[2, :4] = -math.inf
    scores[3, 4:] = math.inf
    for a, b in zip(labels_at_thresholds(scores, (16, 16), [0.2, 0.9]), _reference(scores, (16, 16), [0.2, 0.9]),
                    strict=True):
        assert torch.equal(a, b)
    [plain] = labels_at_thresholds(scores, (16, 16), [None])  # a benchmark without background
    assert torch.equal(plain, labels_at(scores, (16, 16)))
    mixed = labels_at_thresholds(scores, (16, 16), [None, 0.5])
    assert torch.equal(mixed[0], plain) and torch.equal(mixed[1], _reference(scores, (16, 16), [0.5])[0])
    assert labels_at_thresholds(scores, (16, 16), []) == []


def test_half_precision_scores():
    scores = torch.rand(5, 10, 10, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for a, b in zip(labels_at_thresholds(scores, (20, 30), THRESHOLDS), _reference(scores, (20, 30), THRESHOLDS),
                    strict=True):
        assert torch.equal(a, b)
