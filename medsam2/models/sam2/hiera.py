"""Hiera, SAM 2's hierarchical image trunk (Ryali et al. 2023, with Bolya et al.'s windowed
absolute position embedding).

A 7x7 stride-4 patch embedding, then four stages of transformer blocks; the first block of stages 2-4
halves the resolution by max-pooling its queries (and its shortcut) and doubles the width and the
number of heads. Most blocks attend within windows; a few chosen blocks attend globally. Features
travel as (B, H, W, C); each stage's output is returned as (B, C, H, W), highest resolution first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.common import MLP


@dataclass(frozen=True)
class HieraConfig:
    """The shape of one Hiera trunk, as SAM 2.1's configs give it."""

    embed_dim: int  # width of stage 1; doubles at each stage
    num_heads: int  # heads of stage 1; doubles at each stage
    stages: tuple[int, ...]  # blocks per stage
    global_attention_blocks: tuple[int, ...]  # indices of the blocks that attend to the whole map
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # window size per stage
    position_embed_size: tuple[int, int] = (14, 14)  # background position embedding, interpolated to the map

    @property
    def channels(self) -> tuple[int, ...]:
        """Output widths of the stages, lowest resolution first (the FPN neck's order)."""
        return tuple(self.embed_dim * 2**i for i in reversed(range(len(self.stages))))


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a (B, H, W, C) map over H, W."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padded to whole windows, and the padded size."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels), (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: (B * windows, window, window, C) -> (B, H, W, C)."""
    padded_h, padded_w = padded_hw
    batch = windows.shape[0] // (padded_h * padded_w // window // window)
    x = windows.reshape(batch, padded_h // window, padded_w // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, : hw[0], : hw[1], :]


class PatchEmbed(nn.Module):
    """A strided conv from the image to the first stage's tokens."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, H/4, W/4, C)
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention whose queries may be max-pooled (the output then has the pooled size)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H', W', C_out)
        batch, height, width, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).unbind(2)  # (B, HW, heads, c)
        if self.q_pool is not None:
            q = _pool(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(batch, height, width, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm (windowed) attention and MLP; a stage's first block also pools and widens."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window_size: int,
        q_stride: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=F.gelu)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H', W', C_out)
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        window = self.window_size
        if window == 0:
            x = self.attn(x)
        else:
            height, width = x.shape[1:3]
            x, padded_hw = window_partition(x, window)
            x = self.attn(x)
            if self.q_stride:
                # the queries were pooled: the windows, and the map they tile, shrank with them
                window //= self.q_stride[0]
                height, width = shortcut.shape[1:3]
                padded_hw = (height + -height % window, width + -width % window)
            x = window_unpartition(x, window, padded_hw, (height, width))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """The trunk: parameter names as in SAM 2.1 checkpoints (`image_encoder.trunk.*`)."""

    def __init__(self, config: HieraConfig, q_stride: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        stages = config.stages
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:-1]}
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.position_embed_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, config.embed_dim, config.window_spec[0], config.window_spec[0])
        )
        self.blocks = nn.ModuleList()
        dim, num_heads, stage = config.embed_dim, config.num_heads, 0
        for i in range(sum(stages)):
            dim_out = dim
            # A stage's first block still uses the previous stage's window (its queries are pooled
            # into the new resolution inside the block).
            window = 0 if i in config.global_attention_blocks else config.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = dim * 2, num_heads * 2, stage + 1
            self.blocks.append(
                MultiScaleBlock(dim, dim_out, num_heads, window, q_stride if i in q_pool_blocks else None)
            )
            dim = dim_out

    def _position_embedding(self, height: int, width: int) -> torch.Tensor:  # -> (1, H, W, C)
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        window = self.pos_embed_window
        tiles = [size // tile for size, tile in zip(background.shape, window.shape)]
        return (background + window.tile(tiles)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C_i, H/4/2^i, W/4/2^i) map per stage, highest resolution first."""
        x = self.patch_embed(x)
        x = x + self._position_embedding(*x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

