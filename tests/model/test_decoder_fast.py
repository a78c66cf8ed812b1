"""The fast decoder (polyphase first block, Winograd second block, channel-last) against the direct
``nn.Conv2d`` reference path: forward values, gradients, state-dict keys and the inference kernel cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcl.model.decoder import GatedDecoder, conv3x3_winograd, upsample_conv3x3_polyphase

SIZES = [(1, 1), (2, 2), (3, 5), (7, 4), (6, 9)]


def _randomised(decoder: GatedDecoder, seed: int = 0) -> GatedDecoder:
    """Non-zero gates and weights of ordinary scale, so every branch contributes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            scale = 0.8 if name.endswith("gate") else 0.2
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    return decoder


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_winograd_equals_the_direct_convolution(height, width):
    torch.manual_seed(height * 10 + width)
    x = torch.randn(3, height, width, 5, dtype=torch.float64)
    weight, bias = torch.randn(4, 5, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expected = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)
    got = conv3x3_winograd(x, weight, bias)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_polyphase_equals_convolving_the_upsampled_map(height, width):
    torch.manual_seed(height * 10 + width)
    z = torch.randn(2, height, width, 6, dtype=torch.float64)
    weight = torch.randn(3, 6, 3, 3, dtype=torch.float64)
    up = F.interpolate(z.permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
    expected = F.conv2d(up, weight, padding=1).permute(0, 2, 3, 1)
    got = upsample_conv3x3_polyphase(z, weight).reshape(2, 2 * height, 2 * width, 3)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (4, 4)])
@pytest.mark.parametrize("stages", [1, 2])
def test_fast_decoder_equals_the_reference(height, width, stages):
    decoder = _randomised(GatedDecoder(12, stages))
    x = torch.randn(2, 12, height, width)
    with torch.no_grad():
        fast, reference = decoder(x), decoder(x, reference=True)
        forced = decoder(x, reference=False)
    assert fast.shape == reference.shape == (2, 12, height * 2 ** stages, width * 2 ** stages)
    assert (fast - reference).abs().max() <= 1e-5 * reference.abs().max()
    # inference on CPU defaults to the fast path (its channel-last output), the reference is channel-first
    assert fast.permute(0, 2, 3, 1).is_contiguous() and reference.is_contiguous()
    assert torch.equal(forced, fast)
    recorded = decoder(x)  # with autograd recording: the polyphase stages of forward_recorded by default
    assert (recorded - reference).abs().max() <= 1e-5 * reference.abs().max()
    decoder.reference = True  # the attribute selects the reference path too
    with torch.no_grad():
        assert torch.equal(decoder(x), reference)


def test_fast_decoder_gradients_equal_the_reference():
    """Training uses the fast path: every parameter's gradient and the input's match the direct
    convolution (fp64 to the last bits; fp32 to ~1e-5 relative)."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):  # reference=False: the fast path
        decoder = _randomised(GatedDecoder(8, 2)).to(dtype)
        x = torch.randn(2, 8, 3, 5, dtype=dtype)
        target = torch.randn(2, 8, 12, 20, dtype=dtype)
        grads = []
        for reference in (False, True):
            inp = x.clone().requires_grad_(True)
            decoder.zero_grad()
            loss = (decoder(inp, reference=reference) * target).sum() + decoder(inp, reference=reference).pow(2).mean()
            loss.backward()
            grads.append({"input": inp.grad, **{n: p.grad.clone() for n, p in decoder.named_parameters()}})
        fast, reference = grads
        assert fast.keys() == reference.keys()
        for name in reference:
            scale = reference[name].abs().max().clamp_min(1e-12)
            assert (fast[name] - reference[name]).abs().max() <= tol * scale, (dtype, name)


def _values_and_gradients(decoder: GatedDecoder, x: torch.Tensor, run) -> dict[str, torch.Tensor]:
    inp = x.clone().requires_grad_(True)
    decoder.zero_grad()
    out = run(inp)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    ((out * target).sum() + out.pow(2).mean()).backward()
    return {"output": out.detach(), "input": inp.grad, **{n: p.grad.clone() for n, p in decoder.named_parameters()}}


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (4, 7)])
def test_recorded_stages_equal_the_reference_with_gradients(height, width):
    """The training path (forward_recorded: polyphase first block in native ops, direct second block) gives
    the reference's output and the gradients of the input and of every parameter (fp64 to the last bits,
    fp32 to ~1e-5); it is what a CPU training step runs by default."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        decoder = _randomised(GatedDecoder(8, 2)).to(dtype)
        x = torch.randn(2, 8, height, width, dtype=dtype)
        default = _values_and_gradients(decoder, x, decoder)

        def recorded(inp, stages=decoder.stages):
            for stage in stages:
                inp = stage.forward_recorded(inp)
            return inp

        ours = _values_and_gradients(decoder, x, recorded)
        reference = _values_and_gradients(decoder, x, lambda inp, d=decoder: d(inp, reference=True))
        assert ours.keys() == reference.keys() == default.keys()
        for name in reference:
            assert torch.equal(default[name], ours[name]), name  # the default under autograd on CPU
            scale = reference[name].abs().max().clamp_min(1e-12)
            assert (ours[name] - reference[name]).abs().max() <= tol * scale, (dtype, name)


def test_state_dict_keys_are_those_of_conv2d_modules():
    keys = set(GatedDecoder(4, 1).state_dict())
    assert keys == {f"stages.0.{b}.{p}" for b in ("block1", "block2")
                    for p in ("norm.weight", "norm.bias", "conv.weight", "conv.bias", "gate")}


def test_inference_kernel_cache_follows_the_weights():
    """Under no_grad the transformed kernels are cached; loading new weights must not reuse stale ones."""
    decoder = _randomised(GatedDecoder(6, 2), seed=1)
    x = torch.randn(1, 6, 3, 4)
    with torch.no_grad():
        decoder(x)  # fills the cache
        decoder.load_state_dict(_randomised(GatedDecoder(6, 2), seed=2).state_dict())
        fast, reference = decoder(x), decoder(x, reference=True)
    assert (fast - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_under_bf16_autocast_the_residual_stream_stays_fp32():
    """As in the reference (``x + tanh(g)·conv(...)`` promotes back to fp32), only the products are bf16:
    the fast path's error from the exact result is that of the reference under the same autocast."""
    decoder = _randomised(GatedDecoder(32, 2))
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        exact = decoder(x, reference=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, reference = decoder(x), decoder(x, reference=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recorded = decoder(x.clone().requires_grad_(True))  # the training path (bf16 training)
    for ours in (fast, recorded):
        assert ours.dtype == reference.dtype == torch.float32
        assert (ours - exact).abs().max() <= 2 * (reference - exact).abs().max()
