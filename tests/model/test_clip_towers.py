from __future__ import annotations

import copy

import pytest
import torch

from tcl.model.clip_towers import (
    PositionalEmbeddingCache,
    embed_patches,
    encode_captions,
    project_tokens,
    run_block,
    run_first_token_block,
    run_self_only_block,
)
from tcl.model.fast_blocks import use_fast_blocks
from tests import reference_official as ref


def test_self_only_block_equals_attention_with_diagonal_mask(tiny_tcl):
    block = tiny_tcl.clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 17, 64)
    mask = ref.self_only_mask(17)
    expected = block(x, attn_mask=mask)  # open_clip's own block with the official −inf/0 mask
    assert torch.allclose(run_self_only_block(block, x), expected, atol=1e-5)
    # ...and differs from normal attention, so the mask matters
    assert not torch.allclose(block(x), expected, atol=1e-3)


def test_positional_embedding_native_grid_is_untouched_and_others_are_cached(tiny_tcl):
    visual = tiny_tcl.clip.visual
    cache = PositionalEmbeddingCache()
    pos = visual.positional_embedding
    assert cache(pos, (4, 4), (4, 4)) is pos
    first = cache(pos, (4, 4), (5, 7))
    assert first.shape == (1 + 35, 64)
    assert torch.equal(first[0], pos[0])  # the class-token entry is kept
    assert cache(pos, (4, 4), (5, 7)) is first  # cached
    with torch.no_grad():
        pos.add_(1.0)  # e.g. load_state_dict: in-place update bumps the version
    second = cache(pos, (4, 4), (5, 7))
    assert second is not first and torch.allclose(second, first + 1.0, atol=1e-5)


def test_embed_patches_grid_and_layout(tiny_tcl):
    tokens, grid = embed_patches(tiny_tcl.clip.visual, torch.randn(3, 3, 48, 80), PositionalEmbeddingCache())
    assert grid == (3, 5)
    assert tokens.shape == (3, 1 + 15, 64)


def test_encode_image_matches_open_clip_at_native_size(tiny_tcl):
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tiny_tcl.encode_image(image), tiny_tcl.clip.encode_image(image), atol=1e-5)


def test_encode_image_follows_average_pooling_towers(tiny_clip_config):
    from tcl import TCLConfig, create_tcl

    config = dict(tiny_clip_config, vision_cfg=dict(tiny_clip_config["vision_cfg"], pool_type="avg"))
    model = create_tcl(config, config=TCLConfig(ie_freeze=2))
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), model.clip.encode_image(image), atol=1e-5)


def _block_and_tokens(tiny_tcl, trainable: bool):
    block = copy.deepcopy(tiny_tcl.clip.visual.transformer.resblocks[1]).requires_grad_(trainable)
    return block, torch.randn(3, 17, 64, requires_grad=True)


def _assert_same_values_and_gradients(ours: torch.Tensor, expected: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """Equal outputs, and equal gradients of a random projection of them with respect to ``inputs``."""
    weight = torch.randn_like(expected)
    grads = torch.autograd.grad((ours * weight).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weight).sum(), inputs)
    assert torch.allclose(ours, expected, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("trainable", [False, True])
def test_recorded_block_equals_open_clip_block_with_gradients(tiny_tcl, trainable):
    # run_block computes the attention itself when autograd records it (the masked re-encoding of the
    # training step): outputs and every gradient must be those of open_clip's own block.
    block, x = _block_and_tokens(tiny_tcl, trainable)
    ours = run_block(block, x)
    expected = block(x)
    _assert_same_values_and_gradients(ours, expected, [x, *(p for p in block.parameters() if trainable)])


@pytest.mark.parametrize("fast", [True, False])
def test_recorded_block_runs_no_batched_matmul(tiny_tcl, fast):
    # nn.MultiheadAttention(batch_first=True) under autograd runs its in-projection as a bmm over
    # tokens (1 s per ViT-B/16 training step on CPU); run_block must keep it one product: the oneDNN
    # autograd function by default, one BLAS GEMM with the fast kernels switched off.
    block, x = _block_and_tokens(tiny_tcl, trainable=False)
    with use_fast_blocks(fast), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_block(block, x).sum().backward()
    names = {event.key for event in prof.key_averages()}
    assert "aten::bmm" not in names
    assert ("OneDNNLinearBackward" in names and "aten::addmm" not in names) if fast else "aten::addmm" in names


@pytest.mark.parametrize("trainable", [False, True])
def test_first_token_block_equals_the_blocks_first_row(tiny_tcl, trainable):
    block, x = _block_and_tokens(tiny_tcl, trainable)
    ours = run_first_token_block(block, x)
    expected = block(x)[:, :1]
    assert ours.shape == (3, 1, 64)
    _assert_same_values_and_gradients(ours, expected, [x, *(p for p in block.parameters() if trainable)])


def test_encode_image_gradient_matches_open_clip(tiny_tcl):
    # The masked-image loss backpropagates through encode_image into the mask: its gradient with
    # respect to the image must be open_clip's (whose last block computes every token).
    image = torch.randn(2, 3, 64, 64, requires_grad=True)
    weight = torch.randn(2, tiny_tcl.clip.visual.proj.shape[1])
    (ours,) = torch.autograd.grad((tiny_tcl.encode_image(image) * weight).sum(), image)
    (expected,) = torch.autograd.grad((tiny_tcl.clip.encode_image(image) * weight).sum(), image)
    assert torch.allclose(ours, expected, atol=1e-6, rtol=1e-4)
    assert expected.abs().max() > 1e-4


def test_captions_are_encoded_like_open_clip_on_their_used_positions(tiny_tcl):
    context = tiny_tcl.clip.attn_mask.shape[0]
    captions = ["a", "a red square on a table", " ".join(["cat"] * (2 * context))]  # the last one fills it
    tokens = tiny_tcl.tokenize(captions)
    assert tokens.argmax(dim=-1).tolist()[-1] == context - 1
    with torch.no_grad():
        expected = tiny_tcl.clip.encode_text(tokens, normalize=False)
        assert torch.allclose(encode_captions(tiny_tcl.clip, tokens), expected, atol=1e-5)
        short = tokens[:2]  # their context is cut after the longer one's end-of-text token
        assert torch.allclose(encode_captions(tiny_tcl.clip, short), expected[:2], atol=1e-5)


def test_recorded_projection_equals_the_matrix_product_with_gradients(tiny_tcl):
    # The masker's head (ln_post, then @ proj per pixel) under autograd runs its product through OneDNNLinear:
    # values and the gradients of the map, the LayerNorm and the trainable projection are those of ``x @ proj``.
    head = copy.deepcopy(tiny_tcl.masker.head).requires_grad_(True)
    x = torch.randn(2, 5, 6, head.proj.shape[0], requires_grad=True)
    ours = project_tokens(head.ln, head.proj, x)
    assert type(ours.grad_fn).__name__ == "OneDNNLinearBackward"
    _assert_same_values_and_gradients(ours, head.ln(x) @ head.proj, [x, head.proj, *head.ln.parameters()])
    with torch.no_grad():  # inference keeps the BLAS product: bit-identical to it
        assert torch.equal(project_tokens(head.ln, head.proj, x), head.ln(x) @ head.proj)
