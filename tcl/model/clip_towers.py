"""Dense forward passes through an open_clip ViT, as TCL uses them.

Official counterpart: kakaobrain/tcl bc2b551, sclip/model.py (``VisionTransformer``, ``Transformer``) and
models/tcl/encoders.py (``CLIPImageFeatureEncoder``).

open_clip's ``Transformer.forward`` applies one attention mask to every block, while TCL needs to
stop after block ``ie_freeze`` and to run selected blocks with *self-only* attention. These helpers
therefore drive the blocks of an open_clip ``VisionTransformer`` one at a time. They only read the
CLIP modules, so the same functions serve the frozen CLIP and the masker's trainable block copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_blocks import enabled as fast_blocks_enabled
from .fast_blocks import is_plain_attention, is_plain_block, linear, run_plain_block, run_plain_self_only_block

__all__ = [
    "PositionalEmbeddingCache",
    "embed_patches",
    "run_block",
    "run_first_token_block",
    "encode_captions",
    "run_self_only_block",
    "run_blocks",
    "project_tokens",
    "tokens_to_map",
]


class PositionalEmbeddingCache:
    """Positional embeddings of a ViT resized to any patch grid, computed once per grid size.

    The grid part of the learned embedding is resized bicubically (align_corners=False) to the new
    (h, w); the class-token entry is kept (official sclip/model.py, interpolate_pos_emb). The
    official code re-interpolates on every forward (docs/deviations.md, *CLIP wrapper waste*); here
    the result is cached and invalidated automatically when the parameter is modified in place
    (``load_state_dict``), moved, or cast.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, torch.Tensor] = {}

    def __call__(self, pos_embed: torch.Tensor, native_grid: tuple[int, int], grid: tuple[int, int]):
        if tuple(grid) == tuple(native_grid):
            return pos_embed
        if pos_embed.requires_grad:  # a trainable embedding must stay in the autograd graph
            return _interpolate_pos_embed(pos_embed, native_grid, grid)
        state = (pos_embed.data_ptr(), pos_embed._version, pos_embed.dtype, pos_embed.device)
        key = (tuple(grid), *state)
        if key not in self._entries:
            # Entries of an older version of the parameter are stale: drop them.
            self._entries = {k: v for k, v in self._entries.items() if k[1:] == state}
            self._entries[key] = _interpolate_pos_embed(pos_embed, native_grid, grid)
        return self._entries[key]


def _interpolate_pos_embed(pos_embed: torch.Tensor, native_grid, grid) -> torch.Tensor:
    (gh, gw), (h, w) = native_grid, grid
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    width = pos_embed.shape[-1]
    grid_pos = grid_pos.reshape(1, gh, gw, width).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(h * w, width)
    return torch.cat([cls_pos, grid_pos], dim=0)


def embed_patches(visual: nn.Module, image: torch.Tensor, pos_cache: PositionalEmbeddingCache):
    """Patchify, prepend CLS, add (interpolated) positions and apply ``ln_pre``.

    Returns tokens [B, 1 + h·w, width] (batch first) and the patch grid (h, w). ``image`` height and
    width must be multiples of the patch size.
    """
    x = visual.conv1(image)  # [B, width, h, w]
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + pos_cache(visual.positional_embedding, tuple(visual.grid_size), grid).to(x.dtype)
    return visual.ln_pre(x), grid


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The products of the paths below: :func:`tcl.model.fast_blocks.linear` (oneDNN forwards and backwards,
    the same arithmetic) unless :func:`tcl.model.fast_blocks.use_fast_blocks` switched it off (``F.linear``)."""
    return linear(x, weight, bias) if fast_blocks_enabled() else F.linear(x, weight, bias)


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block.mlp(x)``, its two products through :func:`_linear` for a plain open_clip MLP."""
    if not is_plain_block(block):
        return block.mlp(x)
    mlp = block.mlp
    return _linear(mlp.gelu(_linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False)[0]`` on batch-first tokens [B, L, E], without transposing them.

    ``nn.MultiheadAttention(batch_first=True)`` transposes its input to [L, B, E] and, when autograd
    records the call (the masked-image re-encoding of the training step), cannot take its fused fast
    path: the in-projection then sees a non-contiguous 3-D tensor, which ``F.linear`` runs as a
    *batched* matmul of L products [B, E] × [E, 3E] (M = B rows each) forwards and backwards. Here the
    projection sees contiguous tokens (one GEMM of B·L rows); the arithmetic is the same per element:
    the same in-projection, the same scaled-dot-product kernel, the same out-projection.
    """
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = _linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B, L, 3E]
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(batch, length, width)
    return _linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is a plain open_clip ``ResidualAttentionBlock`` (self-attention, LN, MLP)."""
    attn = getattr(block, "attn", None)
    return (is_plain_attention(attn) and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def run_block(block: nn.Module, x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """One standard open_clip residual attention block on batch-first tokens.

    Where autograd records the block, a plain open_clip ``ResidualAttentionBlock`` is run through
    :func:`_self_attention` (see there why) and :func:`_mlp`, every product through :func:`_linear`; without
    gradients the block's own ``forward`` is kept, so ``nn.MultiheadAttention``'s fused inference path and the
    inference numerics are unchanged.
    """
    if torch.is_grad_enabled() and _plain_block(block):
        x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x)))  # either tower layout: x is batch-first here
        return x + block.ls_2(_mlp(block, block.ln_2(x)))
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def run_first_token_block(block: nn.Module, x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """The output of ``run_block(block, x)`` for the first (class) token only, [B, 1, E].

    A class-token-pooled image embedding reads nothing else from the last block, so the other tokens'
    queries, attention outputs, out-projection and MLP are skipped: only their keys and values are
    needed. For a block that is not a plain open_clip one the whole block runs and the row is taken.
    """
    if not _plain_block(block):
        return run_block(block, x, batch_first)[:, :1]
    attn, width, heads = block.attn, x.shape[-1], block.attn.num_heads
    h = block.ln_1(x)
    q = _linear(h[:, :1], attn.in_proj_weight[:width], attn.in_proj_bias[:width])  # [B, 1, E]
    kv = _linear(h, attn.in_proj_weight[width:], attn.in_proj_bias[width:])  # [B, L, 2E]
    k, v = kv.view(*x.shape[:2], 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    q = q.view(x.shape[0], 1, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0)
    out = _linear(out.transpose(1, 2).reshape(x.shape[0], 1, width), attn.out_proj.weight, attn.out_proj.bias)
    cls = x[:, :1] + block.ls_1(out)
    return cls + block.ls_2(_mlp(block, block.ln_2(cls)))


def encode_captions(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens)`` (un-normalised, EOT pooling) computed on the captions' used positions only.

    The text tower is causal and pools the end-of-text token (the largest token id): positions after the
    last EOT of the batch never reach the embedding, so the context is cut there (a 10-word caption uses
    ~12 of CLIP's 77 positions), and the blocks run on batch-first tokens (open_clip's float causal mask
    keeps ``nn.MultiheadAttention`` off its fused path, and its transposed in-projection is a ``bmm``).
    Same arithmetic per kept position; a tower that is not a plain open_clip one is run by ``encode_text``.
    """
    blocks = getattr(getattr(clip, "transformer", None), "resblocks", None)
    plain = (blocks is not None and getattr(clip, "text_pool_type", None) == "argmax"
             and all(hasattr(clip, name) for name in ("token_embedding", "positional_embedding", "ln_final",
                                                          "attn_mask", "text_projection"))
             and isinstance(clip.attn_mask, torch.Tensor) and all(_plain_block(block) for block in blocks))
    if not plain:
        return clip.encode_text(tokens, normalize=False)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens[:, :length]).to(dtype) + clip.positional_embedding[:length].to(dtype)
    mask = clip.attn_mask[:length, :length].to(dtype)
    for block in blocks:
        x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), mask))
        x = x + block.ls_2(_mlp(block, block.ln_2(x)))
    x = clip.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]
    if clip.text_projection is None:
        return x
    return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection


def run_self_only_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The "MaskCLIP" block of TCL: every token attends only to itself.

    Official: kakaobrain/tcl bc2b551, sclip/model.py, ``Transformer.forward`` with ``ignore_last_attn``.

    With an attention mask that is 0 on the diagonal and −inf elsewhere, the softmax weight of each
    token on itself is exactly 1, so attention reduces to ``out_proj(W_v·LN1(x) + b_v)``. That is
    computed directly; the residual, LN2, the MLP and its residual are kept, as in the official code
    (not the residual-free value-only variant).
    """
    attn = block.attn
    width = x.shape[-1]
    v = _linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    x = x + block.ls_1(_linear(v, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(_mlp(block, block.ln_2(x)))


def run_blocks(blocks, x: torch.Tensor, self_only_last: bool, batch_first: bool = True) -> torch.Tensor:
    """Run ``blocks`` in order; the last one self-only when ``self_only_last``.

    Without autograd, plain open_clip blocks in eval mode run through :mod:`tcl.model.fast_blocks`
    (the same arithmetic with faster kernels; inference and the frozen CLIP of a training step).
    """
    blocks = list(blocks)
    for index, block in enumerate(blocks):
        last = self_only_last and index == len(blocks) - 1
        if fast_blocks_enabled() and not torch.is_grad_enabled() and not block.training and is_plain_block(block):
            x = run_plain_self_only_block(block, x) if last else run_plain_block(block, x)
        elif last:
            x = run_self_only_block(block, x)
        else:
            x = run_block(block, x, batch_first)
    return x


def project_tokens(ln: nn.Module, proj: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """CLIP's ``ln_post`` then ``@ proj`` applied per token ([..., width] -> [..., embed_dim]).

    Where autograd records it (the masker's head in a training step) the product goes through :func:`_linear`;
    inference keeps the BLAS product and its numerics.
    """
    x = ln(x)
    if proj is None:
        return x
    return _linear(x, proj.t()) if torch.is_grad_enabled() else x @ proj


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Drop CLS and reshape patch tokens [B, 1+h·w, C] to a feature map [B, C, h, w]."""
    h, w = grid
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)
