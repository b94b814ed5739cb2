"""Memory encoder: a frame's features fused with its predicted mask into a compact spatial memory."""

from __future__ import annotations

import torch
from torch import nn

from medsam2.models.common import LayerNorm2d


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convs (each with LayerNorm2d and GELU) take the mask from image size to
    the feature grid (1/16) while widening 1 -> 4 -> 16 -> 64 -> 256, then a 1x1 conv."""

    def __init__(self, embed_dim: int = 256, num_layers: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_layers):
            widened = channels * 4
            self.encoder.append(nn.Conv2d(channels, widened, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(widened))
            self.encoder.append(nn.GELU())
            channels = widened
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, C, S/16, S/16)
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm, pointwise MLP (as linears), layer scale."""

    def __init__(self, dim: int = 256, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """ConvNeXt blocks mixing the frame's features with its mask."""

    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """`memory_encoder.*`: projected features + downsampled mask, fused, projected to `out_dim`."""

    def __init__(self, in_dim: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w) of the frame, mask (B, 1, 16h, 16w) already scaled as the model
        wants it (see `SAM2Model.encode_memory`) -> memory (B, out_dim, h, w)."""
        x = self.pix_feat_proj(features) + self.mask_downsampler(mask)
        return self.out_proj(self.fuser(x))
