"""The gated upsampling decoder of TCL's masker (kakaobrain/tcl bc2b551, models/tcl/decoders.py, GDecoder).

Each stage doubles the resolution (nearest) and adds two pre-activation conv blocks whose output
is scaled by ``tanh(g)`` with ``g`` initialised to 0. At initialisation the decoder is therefore
exactly a nearest-neighbour upsampler, and the masker starts from the MaskCLIP dense embedding.

Two forward paths compute the same function (``reference=True`` selects the first):

* the *reference* path is the official computation order: nearest ×2 upsampling, then
  LayerNorm → GELU → 3×3 convolution (``nn.Conv2d``) → gate, twice, on channel-first maps;
* the *fast* path (the default for inference on CPU; differentiable, see :meth:`GatedDecoder.forward` for
  why training runs :meth:`UpsampleStage.forward_recorded` instead: step 1 below, in native ops, with the
  direct second convolution) is an exact reformulation of it, about 2.25× fewer
  multiply-adds in the convolutions, on channel-last maps (LayerNorm over the contiguous last axis,
  no permute copies). Why each step is exact:

  1. **Polyphase first block.** LayerNorm and GELU act on each pixel alone, so on a nearest-upsampled
     map ``GELU(LN(up(x))) = up(GELU(LN(x)))``: the first convolution of a stage sees a map made of
     2×2 constant blocks. An output pixel of parity (py, px) then reads, along each axis, one low-res
     neighbour with the kernel's outer tap and its own low-res pixel with the sum of the other two
     (row parity 0: ``k0·z[i−1] + (k1+k2)·z[i]``; parity 1: ``(k0+k1)·z[i] + k2·z[i+1]``). The zero
     padding of the upsampled map is the zero padding of the low-res one. So the convolution equals four
     2×2 convolutions of the *low-res* map with summed kernels, interleaved (a pixel shuffle):
     16 instead of 36 multiply-adds per 2×2 output pixels, identical in exact arithmetic.
  2. **Winograd second block.** The second convolution's input is no longer piecewise constant; it
     is computed with Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, CVPR 2016): every 2×2
     output tile is ``Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`` of its 4×4 input tile ``d``. This is an algebraic
     identity of the convolution (not an approximation); the transforms only add, subtract and halve
     (entries 0, ±1, ±½), so the rounding stays at the fp32 level (≈1e-6 relative). The channel sums
     become 16 matrix products: 16 multiply-adds per 2×2 output tile instead of 36.

  The parameters are the ``nn.Conv2d`` weights themselves (state-dict keys unchanged; the summed and
  transformed kernels are computed from them in the autograd graph when training, and cached until the
  weights change at inference). Every step is differentiable: torch operations, and for the two
  Winograd transforms small autograd functions whose backward is the transposed (equally exact)
  transform, so gradients are those of the direct convolution up to rounding
  (tests/model/test_decoder_fast.py). The matrix products run as grouped 1×1 convolutions: on this
  project's CPUs oneDNN's convolution is faster than the BLAS matrix product. Under autocast the
  products run in the autocast dtype like any convolution; the transforms' outputs and the residual
  stream stay fp32, as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d", "GatedConvBlock", "UpsampleStage", "GatedDecoder", "conv3x3_winograd",
           "upsample_conv3x3_polyphase"]

# Winograd F(2×2, 3×3) matrices (Lavin & Gray 2016): output Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Polyphase tap sums along one axis (polyphase_kernels): parity 0 reads (z[i−1], z[i]) with (k0, k1+k2),
# parity 1 reads (z[i], z[i+1]) with (k0+k1, k2).


def _grouped_matmul(v: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``out[t, g] = weight[g] @ v[t, g]`` for v [T, groups, C] and weight [groups·K, C] → [T, groups, K].

    Written as a grouped 1×1 convolution of a channel-last [1, groups·C, T, 1] view (no copy), so it
    runs in oneDNN / cuDNN; the channel-last output is again a [T, groups·K] matrix in memory.
    """
    t, g, c = v.shape
    image = v.reshape(1, t, 1, g * c).permute(0, 3, 1, 2)  # NCHW shape, channels_last strides
    out = F.conv2d(image, weight[:, :, None, None], groups=groups)
    return out.permute(0, 2, 3, 1).reshape(t, groups, -1)


def winograd_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``G g Gᵀ`` of a [K, C, 3, 3] kernel, as [16·K, C] (row block 4·a+b holds position (a, b))."""
    g = weight.new_tensor(_G)
    k, c = weight.shape[:2]
    return (g @ weight @ g.T).permute(2, 3, 0, 1).reshape(16 * k, c)


def polyphase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four summed 2×2 kernels of a [K, C, 3, 3] kernel, as [4·K, C, 2, 2] (block 2·py+px).

    The tap sums listed above written as slices and additions (stacked straight into the output layout):
    in the autograd graph of a training step this and its backward cost a few ms, where the equivalent
    ``r @ weight @ rᵀ`` with its permute copies took ≈0.2 s per step at ViT-B's 768 channels.
    """
    k, c = weight.shape[:2]
    t0, t1, t2 = weight.unbind(2)  # the kernel's rows, [K, C, 3] each
    rows = torch.stack([torch.stack([t0, t1 + t2], 2), torch.stack([t0 + t1, t2], 2)])  # [py, K, C, a, 3]
    c0, c1, c2 = rows.unbind(4)
    summed = torch.stack([torch.stack([c0, c1 + c2], -1), torch.stack([c0 + c1, c2], -1)], 1)  # [py, px, K, C, a, b]
    return summed.reshape(4 * k, c, 2, 2)


class _WinogradInput(torch.autograd.Function):
    """Bᵀ d B of every 4×4 tile (stride 2) of a zero-padded channel-last map p [B, 2·th+2, 2·tw+2, C]
    → [B, th, tw, 4, 4, C], Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]. Written
    into preallocated tensors (no stacking copies); the backward is the transposed transform."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, th: int, tw: int) -> torch.Tensor:  # noqa: D102
        ctx.shape = p.shape
        batch, _, wp, channels = p.shape
        rows = p.new_empty((4, batch, th, wp, channels))
        _mix_forward([p[:, k:k + 2 * th:2] for k in range(4)], rows.unbind(0))
        v = p.new_empty((batch, th, tw, 4, 4, channels))
        for a in range(4):
            _mix_forward([rows[a][:, :, k:k + 2 * tw:2] for k in range(4)], v[:, :, :, a].unbind(3))
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        batch, hp, wp, channels = ctx.shape
        th, tw = grad.shape[1:3]
        rows = grad.new_zeros((4, batch, th, wp, channels))
        for a in range(4):
            for k, part in enumerate(_mix_backward(grad[:, :, :, a].unbind(3))):
                rows[a][:, :, k:k + 2 * tw:2] += part
        out = grad.new_zeros((batch, hp, wp, channels))
        for k, part in enumerate(_mix_backward(rows.unbind(0))):
            out[:, k:k + 2 * th:2] += part
        return out, None, None


def _mix_forward(d, out) -> None:
    """out = Bᵀ d along one axis: (d0 − d2, d1 + d2, d2 − d1, d1 − d3)."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _mix_backward(g):
    """The transpose of :func:`_mix_forward`: B g along one axis."""
    return g[0], g[1] - g[2] + g[3], g[1] + g[2] - g[0], -g[3]


class _WinogradOutput(torch.autograd.Function):
    """Aᵀ m A of every tile, m [B, th, tw, 4, 4, K] → pixels [B, th, 2, tw, 2, K],
    Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]; the backward is the transposed transform."""

    @staticmethod
    def forward(ctx, m: torch.Tensor) -> torch.Tensor:  # noqa: D102
        batch, th, tw, _, _, k = m.shape
        s = m.new_empty((2, batch, th, tw, 4, k))
        _reduce_forward(m.unbind(3), s.unbind(0))
        y = m.new_empty((batch, th, 2, tw, 2, k))
        for p in range(2):
            _reduce_forward(s[p].unbind(3), y[:, :, p].unbind(3))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        s = [torch.stack(_reduce_backward(grad[:, :, p].unbind(3)), dim=3) for p in range(2)]
        return torch.stack(_reduce_backward(s), dim=3)


def _reduce_forward(m, out) -> None:
    """out = Aᵀ m along one axis: (m0 + m1 + m2, m1 − m2 − m3)."""
    torch.add(m[0], m[1], out=out[0]).add_(m[2])
    torch.sub(m[1], m[2], out=out[1]).sub_(m[3])


def _reduce_backward(g):
    """The transpose of :func:`_reduce_forward`: A g along one axis."""
    return g[0], g[0] + g[1], g[0] - g[1], -g[1]


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     kernels: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for a channel-last map x [B, H, W, C] → [B, H, W, K],
    by Winograd F(2×2, 3×3) (exact in real arithmetic; see the module docstring). Odd sizes are padded
    to even with zeros past the border and the extra row/column of outputs is dropped. ``kernels`` may
    pass :func:`winograd_kernels` of ``weight`` computed beforehand."""
    batch, height, width, channels = x.shape
    th, tw = (height + 1) // 2, (width + 1) // 2  # 2×2 output tiles
    # zero padding: 1 before (the convolution's), 1 + the rounding-up row/column after
    p = F.pad(x, (0, 0, 1, 1 + 2 * tw - width, 1, 1 + 2 * th - height))
    v = _WinogradInput.apply(p, th, tw).reshape(batch * th * tw, 16, channels)
    kernels = winograd_kernels(weight) if kernels is None else kernels
    # under autocast the products come back in bf16/fp16: the output transform and the residual stream
    # stay in the input's precision, as the reference's ``x + tanh(g)·conv(...)`` promotes back to it
    m = _grouped_matmul(v, kernels.to(v.dtype), 16).to(x.dtype).reshape(batch, th, tw, 4, 4, -1)
    y = _WinogradOutput.apply(m).reshape(batch, 2 * th, 2 * tw, -1)
    if 2 * th != height or 2 * tw != width:
        y = y[:, :height, :width]
    return y if bias is None else y + bias.to(y.dtype)


def upsample_conv3x3_polyphase(z: torch.Tensor, weight: torch.Tensor,
                               kernels: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(up(z), weight, padding=1)`` without bias, for a channel-last low-res map z [B, h, w, C]
    and nearest ×2 upsampling ``up``, as a [B, h, 2, w, 2, K] view (reshape to [B, 2h, 2w, K]).

    One 2×2 convolution with the four phases' kernels over the zero-padded low-res map; the phase
    (py, px) output of low-res pixel (i, j) is its value at (i + py, j + px) (see the module docstring),
    which is a strided view of the convolution's output: no interleaving copy. ``kernels`` may pass
    :func:`polyphase_kernels` of ``weight`` computed beforehand.
    """
    batch, h, w, _ = z.shape
    padded = F.pad(z, (0, 0, 1, 1, 1, 1)).permute(0, 3, 1, 2)  # NCHW shape, channels_last strides
    kernels = polyphase_kernels(weight) if kernels is None else kernels
    out = F.conv2d(padded, kernels.to(padded.dtype)).to(z.dtype)  # [B, 4K, h+1, w+1] (autocast: back to z's)
    out = out.permute(0, 2, 3, 1).contiguous()  # [B, h+1, w+1, 4K] (a no-op for channel-last output)
    k = out.shape[-1] // 4
    sb, si, sj = out.stride()[:3]
    # element (b, i, py, j, px, c) lives at out[b, i + py, j + px, (2·py + px)·K + c]
    return out.as_strided((batch, h, 2, w, 2, k), (sb, si, si + 2 * k, sj, sj + k, 1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same normalisation on a channel-last map [B, H, W, C]."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class GatedConvBlock(nn.Module):
    """LayerNorm2d → GELU → 3×3 conv → ``tanh(gate)`` scaling (gate starts at 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels, eps=1e-5)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True)
        self.gate = nn.Parameter(torch.zeros(()))
        self._kernel_cache: dict[str, tuple[tuple, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reference computation on a [B, C, H, W] map."""
        return torch.tanh(self.gate) * self.conv(F.gelu(self.norm(x)))

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(LN(x)) of a channel-last map (per pixel)."""
        return F.gelu(self.norm.channels_last(x))

    def kernels(self, kind: str) -> torch.Tensor:
        """:func:`winograd_kernels` (``kind="winograd"``) or :func:`polyphase_kernels` of the conv weight.

        Inside the autograd graph they are recomputed (the gradient reaches ``conv.weight``); otherwise
        (inference) they are kept until the weight changes: in place (``load_state_dict``, an optimiser
        step), moved or cast, as the key records its storage, version, device and dtype.
        """
        make = winograd_kernels if kind == "winograd" else polyphase_kernels
        weight = self.conv.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return make(weight)
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        cached = self._kernel_cache.get(kind)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = self._kernel_cache[kind] = (key, make(weight))
        return cached[1]


class UpsampleStage(nn.Module):
    """Nearest ×2 upsampling followed by two gated residual conv blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = GatedConvBlock(channels)
        self.block2 = GatedConvBlock(channels)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """[B, C, h, w] → [B, C, 2h, 2w]; ``reference`` runs the official order (see the module docstring)."""
        if reference:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = x + self.block1(x)
            return x + self.block2(x)
        return self.forward_channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_recorded(self, x: torch.Tensor) -> torch.Tensor:
        """The training path on [B, C, h, w] maps → [B, C, 2h, 2w], native autograd ops only:
        block 1 by the polyphase identity (LN and GELU on the low-res map, one 2×2 convolution with 4·C
        outputs, its phases read through a strided view; 2.25× fewer multiply-adds forwards and backwards),
        block 2 the direct 3×3 convolution (its Winograd form measured slower under autograd)."""
        batch, channels, h, w = x.shape
        b1, b2 = self.block1, self.block2
        g1 = torch.tanh(b1.gate)
        act = F.gelu(b1.norm(x)).contiguous()  # LayerNorm2d returns channel-last strides; oneDNN ran NCHW faster
        out = F.conv2d(F.pad(act, (1, 1, 1, 1)), b1.kernels("polyphase"))  # [B, 4K, h+1, w+1]
        k = out.shape[1] // 4
        sb, sc, si, sj = out.stride()
        # element (b, c, i, py, j, px) of conv(up(act)) is out[b, (2·py + px)·K + c, i + py, j + px]
        y = out.as_strided((batch, k, h, 2, w, 2), (sb, sc, si, 2 * k * sc + si, sj, k * sc + sj))
        # up(x) + tanh(g1)·(y + bias): the bias joins the low-res map, one pass over the full-size one
        base = (x + (g1 * b1.conv.bias)[:, None, None])[:, :, :, None, :, None]
        x = torch.addcmul(base, y, g1).reshape(batch, channels, 2 * h, 2 * w)
        act = F.gelu(b2.norm(x)).contiguous()
        return torch.addcmul(x, F.conv2d(act, b2.conv.weight, b2.conv.bias, padding=1), torch.tanh(b2.gate))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path on channel-last maps: [B, h, w, C] → [B, 2h, 2w, C] (contiguous)."""
        batch, h, w, channels = x.shape
        b1, b2 = self.block1, self.block2
        # block 1: up(x) + tanh(g1)·(conv(up(GELU(LN(x)))) + bias) = (x + tanh(g1)·bias) broadcast over
        # the 2×2 block + tanh(g1)·polyphase; one pass over the full-size map (addcmul)
        g1 = torch.tanh(b1.gate)
        y = upsample_conv3x3_polyphase(b1.activation(x), b1.conv.weight, b1.kernels("polyphase"))
        base = (x + g1 * b1.conv.bias)[:, :, None, :, None]
        x = torch.addcmul(base, y, g1).reshape(batch, 2 * h, 2 * w, channels)
        # block 2: a full 3×3 convolution, by Winograd; bias in place on the fresh output
        y = conv3x3_winograd(b2.activation(x), b2.conv.weight, kernels=b2.kernels("winograd"))
        y = y.add_(b2.conv.bias)
        return torch.addcmul(x, y, torch.tanh(b2.gate))


class GatedDecoder(nn.Module):
    """``num_stages`` upsampling stages: stride-16 ViT tokens → stride 16/2^num_stages maps."""

    def __init__(self, channels: int, num_stages: int = 2, reference: bool = False) -> None:
        super().__init__()
        self.stages = nn.ModuleList(UpsampleStage(channels) for _ in range(num_stages))
        #: run the official computation order (direct ``nn.Conv2d``) instead of the fast path; a plain
        #: attribute (not in the state dict) for comparisons and benchmarks
        self.reference = reference

    @property
    def upsample_factor(self) -> int:
        return 2 ** len(self.stages)

    def forward(self, x: torch.Tensor, reference: bool | None = None) -> torch.Tensor:
        """[B, C, h, w] → [B, C, h·f, w·f] (f = :attr:`upsample_factor`). The fast path returns a
        channel-last tensor (``permute`` of a contiguous [B, H, W, C]); ``reference=True`` runs the official
        order. By default (``None``), on CPU and unless :attr:`reference` is set: without autograd
        (inference) the fast path (benchmarks/window_speed.py); with autograd recording (a training step)
        :meth:`UpsampleStage.forward_recorded`, whose polyphase first block keeps native convolutions (the
        Winograd block's grouped products measured ≈1.1–1.8× the direct convolution's forward + backward at
        the training shapes, batch 4, 224 px; the polyphase stages ≈0.8× the reference's). On GPUs the direct
        convolutions (cuDNN's own algorithms) are kept until the fast paths are measured there.
        ``reference=False`` forces the fast path (differentiable, gradients tested against the direct
        convolution)."""
        recorded = False
        if reference is None:
            reference = self.reference or x.device.type != "cpu"
            recorded = not reference and torch.is_grad_enabled()
        if reference or recorded:
            for stage in self.stages:
                x = stage(x, reference=True) if reference else stage.forward_recorded(x)
            return x
        x = x.permute(0, 2, 3, 1)
        for stage in self.stages:
            x = stage.forward_channels_last(x)
        return x.permute(0, 3, 1, 2)
