"""TCL's masker ("grounder"): trainable ViT block copy → gated decoder → projection → Sim2Mask.

Official counterpart: kakaobrain/tcl bc2b551, models/tcl/masker.py (``Masker``, ``Sim2Mask``). The
masker reads the frozen CLIP tokens after block ``ie_freeze`` and produces a stride-4 dense
embedding ``V``; Sim2Mask turns its cosine similarity with text embeddings into masks.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .clip_towers import project_tokens, run_blocks, tokens_to_map
from .decoder import GatedDecoder

__all__ = ["gumbel_sigmoid", "Sim2Mask", "DenseProjection", "Masker", "l2_normalize"]


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """L2 normalisation with the eps of the official code (fp16-safe)."""
    return F.normalize(x, dim=dim, eps=eps)


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None):
    """Straight-through Gumbel-sigmoid (kakaobrain/tcl bc2b551, models/tcl/gumbel.py, gumbel_sigmoid).

    Logistic noise ``log(u/(1-u))`` is added to the logits; the forward value is the hard mask
    ``1[σ((z+ℓ)/τ) > 0.5]`` and the gradient is that of the *noisy* soft mask.
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(torch.finfo(u.dtype).tiny, 1.0 - torch.finfo(u.dtype).eps)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


class Sim2Mask(nn.Module):
    """Cosine similarity → mask logits ``w·S + b`` with learnable scalars (init w=10, b=−2.5)."""

    def __init__(self, init_w: float = 10.0, init_b: float = -2.5, gumbel_tau: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))
        self.gumbel_tau = gumbel_tau

    def logits(self, similarity: torch.Tensor) -> torch.Tensor:
        return similarity * self.w + self.b

    def forward(self, similarity: torch.Tensor, stochastic: bool = True):
        """Return (hard, soft) masks. ``stochastic`` uses Gumbel noise (training, whatever the
        module mode); otherwise the hard mask is ``1[soft > 0.5]``."""
        logits = self.logits(similarity)
        soft = torch.sigmoid(logits)
        hard = gumbel_sigmoid(logits, self.gumbel_tau) if stochastic else (soft > 0.5).to(soft.dtype)
        return hard, soft


class DenseProjection(nn.Module):
    """A copy of CLIP's ``ln_post`` and ``proj``, applied per pixel of a [B, C, H, W] map."""

    def __init__(self, ln: nn.Module, proj: torch.Tensor) -> None:
        super().__init__()
        self.ln = copy.deepcopy(ln)
        self.proj = nn.Parameter(proj.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = project_tokens(self.ln, self.proj, x.permute(0, 2, 3, 1))
        return x.permute(0, 3, 1, 2)


class Masker(nn.Module):
    """Trainable part of TCL.

    ``blocks`` are deep copies of CLIP blocks ``ie_freeze+1 .. depth`` (1-based), the last one run
    self-only, so with ``ie_freeze = depth-1`` the backbone is a per-token function and no spatial
    mixing happens before the decoder. ``head`` is a copy of CLIP's ``ln_post``/``proj``. With all
    gates at 0 the output at step 0 is the nearest-upsampled MaskCLIP embedding, as
    officially (kakaobrain/tcl bc2b551, models/tcl/modules.py: ``Gate`` starts at 0).
    """

    def __init__(self, visual: nn.Module, ie_freeze: int, decoder_stages: int = 2,
                 sim2mask_init_w: float = 10.0, sim2mask_init_b: float = -2.5,
                 gumbel_tau: float = 1.0) -> None:
        super().__init__()
        resblocks = visual.transformer.resblocks
        self.blocks = nn.ModuleList(copy.deepcopy(block) for block in resblocks[ie_freeze:])
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        width = visual.conv1.out_channels
        self.decoder = GatedDecoder(width, decoder_stages)
        self.head = DenseProjection(visual.ln_post, visual.proj)
        self.sim2mask = Sim2Mask(sim2mask_init_w, sim2mask_init_b, gumbel_tau)

    def dense_embedding(self, clip_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """CLIP block-``ie_freeze`` tokens [B, 1+h·w, width] → un-normalised V [B, D, 4h, 4w]."""
        x = run_blocks(self.blocks, clip_tokens, self_only_last=True, batch_first=self.batch_first)
        return self.head(self.decoder(tokens_to_map(x, grid)))

    @staticmethod
    def similarity(dense: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every pixel of ``dense`` [B, D, H, W] with every text [N, D]."""
        return torch.einsum("bchw,nc->bnhw", l2_normalize(dense, dim=1), l2_normalize(text_emb, dim=-1))

    def soft_masks(self, clip_tokens: torch.Tensor, grid: tuple[int, int], text_emb: torch.Tensor):
        """Deterministic soft masks σ(w·S + b) [B, N, 4h, 4w] used for segmentation."""
        return torch.sigmoid(self.sim2mask.logits(self.similarity(self.dense_embedding(clip_tokens, grid),
                                                                  text_emb)))
