"""Faster kernels for CLIP's transformer blocks: the same arithmetic as open_clip's.

:func:`run_plain_block` and :func:`run_plain_self_only_block` serve :func:`tcl.model.clip_towers.run_blocks`
when autograd is off (evaluation, ``tcl predict``, the frozen CLIP of a training step); :func:`linear` also
computes the products of the recorded paths of :mod:`tcl.model.clip_towers` (the masked re-encoding of a
training step, the masker's block copies and head). What changes is only *which kernel* computes each
product, never the computation:

* :func:`linear` computes ``x @ weightᵀ + bias`` in fp32 on CPU as a 1×1 convolution of a channel-last
  view of ``x`` (no copy): the same matrix product, run by oneDNN instead of the BLAS ``addmm`` (on the
  AMD EPYC CPUs this project is measured on, oneDNN's fp32 kernels are 1.3–1.8× faster at CLIP's shapes).
  Under autograd it is :class:`OneDNNLinear`, whose backward keeps the fastest kernel of each product
  (benchmarks/train_step.py). Elsewhere (GPU, other dtypes, autocast) it is ``F.linear``.
* :func:`run_plain_block` is open_clip's ``ResidualAttentionBlock`` (LN → multi-head self-attention →
  residual → LN → MLP → residual) with the in/out projections and the MLP through :func:`linear` and the
  attention softmax(QKᵀ/√d)V through ``F.scaled_dot_product_attention``, on batch-first tokens.

Results equal the block's own forward up to fp32 rounding (≈1e-6; tests/model/test_fast_blocks.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear", "OneDNNLinear", "is_plain_attention", "is_plain_block", "run_plain_block",
           "run_plain_self_only_block", "enabled", "use_fast_blocks"]

_ENABLED = [True]


def enabled() -> bool:
    """Whether :func:`tcl.model.clip_towers.run_blocks` may use these kernels (see :func:`use_fast_blocks`)."""
    return _ENABLED[0]


@contextlib.contextmanager
def use_fast_blocks(on: bool):
    """Switch these kernels on or off inside the ``with`` block (benchmarks compare against open_clip's own
    forward with ``use_fast_blocks(False)``)."""
    previous, _ENABLED[0] = _ENABLED[0], on
    try:
        yield
    finally:
        _ENABLED[0] = previous


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and x.numel() > 0)


def _as_image(rows: torch.Tensor) -> torch.Tensor:
    """A [N, C] matrix as the [1, C, N, 1] image of N pixels with channel-last strides (a view, no copy)."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _conv1x1(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``rows @ weightᵀ + bias`` for rows [N, C], weight [K, C], as a oneDNN 1×1 convolution → [N, K]."""
    out = F.conv2d(_as_image(rows), weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(rows.shape[0], weight.shape[0])


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` (fp32, CPU) with each product of the forward and backward in its fastest
    kernel at CLIP's shapes; exact up to fp32 rounding.

    * forward ``x Wᵀ + b``: a oneDNN 1×1 convolution;
    * input gradient ``g W``: its adjoint, a oneDNN 1×1 transposed convolution (≈2× faster than the BLAS
      ``mm`` of ``F.linear``'s backward);
    * weight gradient ``gᵀ x``: the BLAS ``mm``, as in ``F.linear`` (oneDNN's weight gradient of a 1×1
      convolution measured ≈1.2× slower than the whole of ``F.linear``'s backward); bias gradient ``Σ g``.

    Only the gradients autograd asks for are computed, and ``x`` is kept for the backward only when the
    weight needs a gradient (a frozen CLIP's re-encoding keeps nothing more than ``F.linear`` would).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight)
        ctx.input_shape = x.shape
        return _conv1x1(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(_as_image(grad_rows), weight[:, :, None, None])
            grad_x = grad_x.permute(0, 2, 3, 1).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_rows.t() @ rows
        if ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [..., C], weight [K, C]; fp32 CPU products run in oneDNN
    (:class:`OneDNNLinear` where autograd records the call)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return OneDNNLinear.apply(x, weight, bias)
    *lead, channels = x.shape
    return _conv1x1(x.reshape(-1, channels), weight, bias).view(*lead, weight.shape[0])


def is_plain_attention(attn: nn.Module | None) -> bool:
    """Whether ``attn`` is a plain ``nn.MultiheadAttention``: one packed in-projection with biases, no extra
    key/value biases, no zero attention."""
    return (type(attn) is nn.MultiheadAttention and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and attn.bias_k is None and attn.bias_v is None and not attn.add_zero_attn)


def is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is a plain open_clip ``ResidualAttentionBlock`` that :func:`run_plain_block` reproduces:
    :func:`is_plain_attention` self-attention and an MLP ``c_fc → act → c_proj``."""
    mlp = getattr(block, "mlp", None)
    return (is_plain_attention(getattr(block, "attn", None))
            and not hasattr(block, "ln_1_kv") and all(hasattr(block, n) for n in ("ln_1", "ln_2", "ls_1", "ls_2"))
            and isinstance(mlp, nn.Sequential) and all(hasattr(mlp, n) for n in ("c_fc", "gelu", "c_proj")))


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mlp = block.mlp
    return linear(mlp.gelu(linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)


def run_plain_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` on batch-first tokens [B, L, E] for a block :func:`is_plain_block` accepts (eval mode)."""
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, L, 3E]
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(_mlp(block, block.ln_2(x)))


def run_plain_self_only_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`tcl.model.clip_towers.run_self_only_block` (each token attends only to itself, so the
    attention output is the value projection) with the products through :func:`linear`."""
    attn = block.attn
    width = x.shape[-1]
    v = linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    x = x + block.ls_1(linear(v, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(_mlp(block, block.ln_2(x)))
