"""The gated upsampling decoder of TCL's masker (kakaobrain/tcl bc2b551, models/tcl/decoders.py, GDecoder).

Each stage doubles the resolution (nearest) and adds two pre-activation conv blocks whose output
is scaled by ``tanh(g)`` with ``g`` initialised to 0. At initialisation the decoder is therefore
exactly a nearest-neighbour upsampler, and the masker starts from the MaskCLIP dense embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d", "GatedConvBlock", "UpsampleStage", "GatedDecoder"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GatedConvBlock(nn.Module):
    """LayerNorm2d → GELU → 3×3 conv → ``tanh(gate)`` scaling (gate starts at 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels, eps=1e-5)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate) * self.conv(F.gelu(self.norm(x)))


class UpsampleStage(nn.Module):
    """Nearest ×2 upsampling followed by two gated residual conv blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = GatedConvBlock(channels)
        self.block2 = GatedConvBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = x + self.block1(x)
        return x + self.block2(x)


class GatedDecoder(nn.Module):
    """``num_stages`` upsampling stages: stride-16 ViT tokens → stride 16/2^num_stages maps."""

    def __init__(self, channels: int, num_stages: int = 2) -> None:
        super().__init__()
        self.stages = nn.ModuleList(UpsampleStage(channels) for _ in range(num_stages))

    @property
    def upsample_factor(self) -> int:
        return 2 ** len(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x
