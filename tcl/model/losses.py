"""TCL training objectives (kakaobrain/tcl bc2b551, models/tcl/tcl.py ``TCL.forward``, models/tcl/mi.py).

Image-level TCL (``ImageTextContrastiveLoss``) contrasts CLIP embeddings of masked images with
captions; region-level TCL (``RegionTextContrastiveLoss``) contrasts mask-pooled dense embeddings
with captions. Both use negatives from every process, gathered with gradient, and fall back to the
local batch when ``torch.distributed`` is not initialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import gather_cat, get_rank
from .masker import l2_normalize

__all__ = [
    "ImageTextContrastiveLoss",
    "RegionTextContrastiveLoss",
    "area_prior_loss",
    "total_variation",
    "masked_average_pool",
]


class _LearnableTemperature(nn.Module):
    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = max_scale

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_scale)

    @staticmethod
    def _labels(batch: int, device) -> torch.Tensor:
        return torch.arange(batch, device=device) + batch * get_rank()


class ImageTextContrastiveLoss(_LearnableTemperature):
    """Symmetric InfoNCE between image embeddings [B, D] and text embeddings [B, D].

    ``L = ½(CE(s·ẑ T̂_allᵀ) + CE(s·t̂ Ẑ_allᵀ))`` with labels at the global index of each pair.
    """

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb = l2_normalize(image_emb), l2_normalize(text_emb)
        all_image, all_text = gather_cat(image_emb), gather_cat(text_emb)
        scale = self.scale()
        labels = self._labels(image_emb.shape[0], image_emb.device)
        loss_image = F.cross_entropy(scale * image_emb @ all_text.t(), labels)
        loss_text = F.cross_entropy(scale * text_emb @ all_image.t(), labels)
        return 0.5 * (loss_image + loss_text)


class RegionTextContrastiveLoss(_LearnableTemperature):
    """Region-level InfoNCE on mask-pooled embeddings (the official ``ExtendedInfoNCE``).

    ``pooled`` [B, N, D] holds, for each local image b and each global text n, the image's dense
    embedding pooled with *that text's* mask. Image→text compares image b with every text n using
    pooled[b, n]. Text→image compares each local text t with every global image, through the slice
    ``pooled[:, B·rank : B·(rank+1)]`` that every process takes for *its own* texts and that is then
    gathered. This reproduces the official code exactly: on one process each text sees every image
    pooled with its own mask, while with several processes an image of another process arrives
    pooled with the text of the same position on *that* process (see docs/deviations.md).
    Requires the same batch size on every process.
    """

    def forward(self, pooled: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        batch = pooled.shape[0]
        pooled, text_emb = l2_normalize(pooled), l2_normalize(text_emb)
        all_text = gather_cat(text_emb)  # [N, D]
        if pooled.shape[1] != all_text.shape[0]:
            raise ValueError(f"pooled embeddings cover {pooled.shape[1]} texts but {all_text.shape[0]} "
                             "were gathered: every process needs the same batch size")
        scale = self.scale()
        labels = self._labels(batch, pooled.device)
        logits_image = scale * torch.einsum("bnc,nc->bn", pooled, all_text)
        start = batch * get_rank()
        own_texts = gather_cat(pooled[:, start:start + batch])  # [N_img, B_txt, D]
        logits_text = scale * torch.einsum("ntc,tc->tn", own_texts, text_emb)
        return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))


def masked_average_pool(dense: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Σ_yx m·V / (Σ_yx m + eps): dense [B, D, H, W] with masks [B, N, H, W] → [B, N, D]."""
    weights = masks / (masks.sum(dim=(2, 3), keepdim=True) + eps)
    return torch.einsum("bchw,bnhw->bnc", dense, weights)


def area_prior_loss(masks: torch.Tensor, prior: float) -> torch.Tensor:
    """|mean(masks) − prior|, a batch-level prior as in the official code (docs/deviations.md,
    *Batch-level area priors*)."""
    return (masks.mean() - prior).abs()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal plus vertical difference of a [*, *, H, W] tensor."""
    return ((x[..., :, 1:] - x[..., :, :-1]).abs().mean()
            + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())
