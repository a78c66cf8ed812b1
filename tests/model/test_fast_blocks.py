"""The inference kernels of CLIP's blocks (tcl.model.fast_blocks) against open_clip's own forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcl.model.clip_towers import run_blocks
from tcl.model.fast_blocks import OneDNNLinear, is_plain_block, linear, run_plain_block, use_fast_blocks


def test_linear_equals_f_linear_for_any_leading_shape():
    torch.manual_seed(0)
    weight, bias = torch.randn(7, 5), torch.randn(7)
    for shape in ((3, 5), (2, 4, 5), (1, 5), (2, 3, 4, 5)):
        x = torch.randn(shape)
        assert torch.allclose(linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-5)
    x = torch.randn(4, 6, 5).transpose(0, 1)  # non-contiguous input
    assert torch.allclose(linear(x, weight), F.linear(x, weight), atol=1e-5)


def test_onednn_linear_backward_is_the_exact_adjoint():
    # fp64 (the same code, reference kernels): the backward is the derivative of the forward to rounding
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(OneDNNLinear.apply, (x, weight, bias))
    assert torch.autograd.gradcheck(OneDNNLinear.apply, (x, weight.detach(), None))  # frozen weight, no bias


@pytest.mark.parametrize("trainable", [False, True])
def test_recorded_linear_equals_f_linear_with_gradients(trainable):
    # Under autograd linear() runs OneDNNLinear: values and the gradients of the input, weight and bias
    # equal F.linear's in fp32, for a non-contiguous input and a row slice (run_first_token_block's query).
    torch.manual_seed(0)
    weight = torch.randn(24, 16, requires_grad=trainable)
    bias = torch.randn(24, requires_grad=trainable)
    params = [weight, bias] if trainable else []
    for make in (lambda t: t, lambda t: t.transpose(0, 1), lambda t: t[:, :1]):
        base = torch.randn(6, 5, 16, requires_grad=True)
        x = make(base)
        ours, expected = linear(x, weight, bias), F.linear(x, weight, bias)
        assert ours.grad_fn is not None and type(ours.grad_fn).__name__ == "OneDNNLinearBackward"
        target = torch.randn_like(expected)
        for weighted in (True, False):  # unweighted: y.sum()'s expanded (stride-0) gradient
            got = torch.autograd.grad((ours * target if weighted else ours).sum(), [base, *params], retain_graph=True)
            want = torch.autograd.grad((expected * target if weighted else expected).sum(), [base, *params],
                                       retain_graph=True)
            assert torch.allclose(ours, expected, atol=1e-5)
            for g, w in zip(got, want, strict=True):
                assert torch.allclose(g, w, atol=1e-5, rtol=1e-5)


def test_plain_block_equals_open_clip_forward(tiny_tcl):
    torch.manual_seed(0)
    block = tiny_tcl.clip.visual.transformer.resblocks[0]
    assert is_plain_block(block)
    x = torch.randn(2, 17, block.ln_1.normalized_shape[0])
    with torch.no_grad():
        batch_first = tiny_tcl.clip.visual.transformer.batch_first
        expected = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        assert (run_plain_block(block, x) - expected).abs().max() < 1e-5
    assert not is_plain_block(nn.Linear(4, 4))


def test_run_blocks_uses_the_fast_kernels_only_without_autograd(tiny_tcl):
    torch.manual_seed(0)
    image, text = torch.randn(2, 3, 64, 48), F.normalize(torch.randn(3, 32), dim=-1)
    with torch.no_grad():
        tokens, _ = tiny_tcl.clip_features(image)
        masks = tiny_tcl.generate_masks(image, text, apply_pamr=True, kp_w=0.3)
        with use_fast_blocks(False):
            ref_tokens, _ = tiny_tcl.clip_features(image)
            ref_masks = tiny_tcl.generate_masks(image, text, apply_pamr=True, kp_w=0.3)
    assert (tokens - ref_tokens).abs().max() < 1e-5
    assert (masks - ref_masks).abs().max() < 1e-5
    blocks = tiny_tcl.clip.visual.transformer.resblocks
    x = torch.randn(1, 5, blocks[0].ln_1.normalized_shape[0], requires_grad=True)
    run_blocks(blocks, x, self_only_last=True).sum().backward()  # autograd on: open_clip's path
    assert x.grad is not None
