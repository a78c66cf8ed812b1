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
from .fast_blocks import is_plain_block, run_plain_block, run_plain_self_only_block

__all__ = [
    "PositionalEmbeddingCache",
    "embed_patches",
    "run_block",
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


def run_block(block: nn.Module, x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """One standard open_clip residual attention block on batch-first tokens."""
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


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
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    x = x + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


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
    """CLIP's ``ln_post`` then ``@ proj`` applied per token ([..., width] -> [..., embed_dim])."""
    x = ln(x)
    return x @ proj if proj is not None else x


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Drop CLS and reshape patch tokens [B, 1+h·w, C] to a feature map [B, C, h, w]."""
    h, w = grid
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)
