"""SAM 2's image encoder: the Hiera trunk and an FPN neck that brings every stage to one width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.sam2.hiera import Hiera, HieraConfig


class FpnNeck(nn.Module):
    """1x1 lateral convs to `d_model` channels; the two lowest-resolution levels are summed top-down
    (nearest-neighbour upsampling), the two highest keep only their lateral features, as in SAM 2.1."""

    def __init__(self, d_model: int, backbone_channel_list: tuple[int, ...], top_down_levels: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.convs = nn.ModuleList()
        for channels in backbone_channel_list:  # lowest resolution first
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(channels, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.top_down_levels = top_down_levels

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk outputs, highest resolution first -> same-width maps in the same order."""
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(levels)
        coarser = None
        last = len(levels) - 1
        for i in range(last, -1, -1):
            lateral = self.convs[last - i](levels[i])
            if i in self.top_down_levels and coarser is not None:
                upsampled = F.interpolate(coarser.to(torch.float32), scale_factor=2.0, mode="nearest")
                coarser = lateral + upsampled
            else:
                coarser = lateral
            outputs[i] = coarser
        return outputs


class ImageEncoder(nn.Module):
    """Trunk + neck; the lowest-resolution level is dropped (`scalp`), leaving strides 4, 8 and 16."""

    def __init__(self, trunk_config: HieraConfig, d_model: int = 256) -> None:
        super().__init__()
        self.trunk = Hiera(trunk_config)
        self.neck = FpnNeck(d_model, trunk_config.channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) normalised images -> [(B, d, S/4, S/4), (B, d, S/8, S/8), (B, d, S/16, S/16)]."""
        return self.neck(self.trunk(images))[:-1]
