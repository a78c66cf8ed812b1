from __future__ import annotations

import pytest
import torch

from tcl.model.pamr import pamr
from tests import reference_official as ref


def two_region_image():
    image = torch.zeros(1, 3, 12, 12)
    image[..., 6:] = 1.0  # left half black, right half white
    return image


def test_uniform_mask_on_uniform_image_is_unchanged():
    image = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.full((1, 2, 8, 8), 0.3)
    assert torch.allclose(pamr(image, mask), mask, atol=1e-6)


def test_masks_do_not_leak_across_a_colour_edge():
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., :6] = 1.0  # the mask follows the edge exactly
    refined = pamr(two_region_image(), mask)
    assert torch.allclose(refined, mask, atol=1e-4)


def test_outlier_inside_a_region_is_smoothed_away():
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., :6] = 1.0
    mask[0, 0, 3, 2] = 0.0  # one wrong pixel inside the black region
    refined = pamr(two_region_image(), mask)
    assert refined[0, 0, 3, 2] > 0.95
    assert refined[..., 6:].abs().max() < 1e-4


def test_affinity_weights_are_uniform_over_48_neighbours_on_a_flat_image():
    """Flat image: every affinity logit is 0, so one iteration is the mean of the 48 neighbours."""
    image = torch.zeros(1, 3, 30, 30)
    mask = torch.rand(1, 1, 30, 30)
    one = pamr(image, mask, iterations=1)
    padded = torch.nn.functional.pad(mask, (24,) * 4, mode="replicate")
    total = torch.zeros(())
    for d in (1, 2, 4, 8, 12, 24):
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if (dy, dx) != (0, 0):
                    total = total + padded[0, 0, 24 + 15 + dy, 24 + 15 + dx]
    assert torch.allclose(one[0, 0, 15, 15], total / 48, atol=1e-6)


@pytest.mark.parametrize("size", [(7, 9), (28, 28)])
def test_matches_the_convolutional_formulation(size):
    torch.manual_seed(1)
    image, mask = torch.randn(2, 3, *size), torch.rand(2, 5, *size)
    assert torch.allclose(pamr(image, mask, class_chunk=2), ref.pamr(image, mask), atol=1e-5)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one size"):
        pamr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))
