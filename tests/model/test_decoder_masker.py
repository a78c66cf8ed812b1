from __future__ import annotations

import torch
import torch.nn.functional as F

from tcl.model.decoder import GatedDecoder, LayerNorm2d
from tcl.model.masker import Sim2Mask, gumbel_sigmoid


def test_layernorm2d_normalises_channels():
    norm = LayerNorm2d(8)
    x = torch.randn(2, 8, 5, 6) * 3 + 1
    y = norm(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(2, 5, 6), atol=1e-5)
    assert torch.allclose(y.var(dim=1, unbiased=False), torch.ones(2, 5, 6), atol=1e-3)


def test_decoder_with_zero_gates_is_nearest_upsampling():
    decoder = GatedDecoder(16, num_stages=2)
    x = torch.randn(2, 16, 3, 5)
    expected = F.interpolate(x, scale_factor=4, mode="nearest")
    assert torch.equal(decoder(x), expected)
    with torch.no_grad():
        decoder.stages[0].block1.gate.fill_(0.5)
    assert decoder(x).shape == (2, 16, 12, 20)
    assert not torch.allclose(decoder(x), expected)


def test_masker_starts_from_the_maskclip_embedding(tiny_tcl):
    """At step 0 the masker output is the nearest-upsampled MaskCLIP embedding.

    The official decoder's tanh gates start at 0 too (kakaobrain/tcl bc2b551, models/tcl/modules.py, Gate).
    """
    image = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tokens, grid = tiny_tcl.clip_features(image)
        dense = tiny_tcl.masker.dense_embedding(tokens, grid)
        maskclip = tiny_tcl.maskclip_dense(tokens, grid)
    assert dense.shape == (2, 32, 16, 12)
    assert torch.allclose(dense, F.interpolate(maskclip, scale_factor=4, mode="nearest"), atol=1e-5)


def test_sim2mask_initialisation_threshold():
    sim2mask = Sim2Mask()
    similarity = torch.tensor([0.2, 0.25, 0.3])
    hard, soft = sim2mask(similarity, stochastic=False)
    assert torch.allclose(soft, torch.sigmoid(10 * similarity - 2.5))
    assert hard.tolist() == [0.0, 0.0, 1.0]  # σ(z) > 0.5 exactly where cos > 0.25


def test_gumbel_sigmoid_is_binary_straight_through_and_calibrated():
    torch.manual_seed(0)
    logits = torch.full((200_000,), 0.7, requires_grad=True)
    hard = gumbel_sigmoid(logits, tau=1.0)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    # With logistic noise, P(hard = 1) = σ(logit).
    assert abs(hard.mean().item() - torch.sigmoid(torch.tensor(0.7)).item()) < 0.005
    hard.sum().backward()
    assert logits.grad is not None and (logits.grad > 0).all()  # gradient of the noisy soft mask
