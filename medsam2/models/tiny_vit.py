"""TinyViT image encoder, in the variant LiteMedSAM uses (from MobileSAM, Microsoft's TinyViT-5M).

Unlike the ImageNet TinyViT, the patch embedding is two 1x1 convs (no downsampling, so the first
stage runs at the full input resolution), the last patch merging may keep its resolution (stride 1),
and a SAM neck maps the last stage to a 256-channel embedding at 1/4 of the input size.

Between stages of attention blocks, features travel as (B, H, W, C); the convs see them through
`permute(0, 3, 1, 2)`, a channels-last view, so no copies are made at the hand-overs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from medsam2.models.common import LayerNorm2d, float32_softmax


class Conv2dBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm; `fused` folds the BatchNorm into the conv."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def fused(self) -> nn.Conv2d:
        """The equivalent conv (with bias) for eval mode. The folding is done in float64 so that
        the folded weights carry a single float32 rounding, keeping outputs closest to unfused."""
        conv, bn = self.c, self.bn
        weight, bias = fuse_conv_bn_weights(
            conv.weight.double(),
            None,
            bn.running_mean.double(),
            bn.running_var.double(),
            bn.eps,
            bn.weight.double(),
            bn.bias.double(),
        )
        fused = copy.deepcopy(conv)
        fused.weight = nn.Parameter(weight.to(conv.weight.dtype))
        fused.bias = nn.Parameter(bias.to(conv.weight.dtype))
        return fused


def fold_batch_norms(module: nn.Module) -> None:
    """Replace every `Conv2dBN` inside `module` by its fused conv (frozen running statistics)."""
    for name, child in module.named_children():
        if isinstance(child, Conv2dBN):
            setattr(module, name, child.fused())
        else:
            fold_batch_norms(child)


class PatchEmbed(nn.Module):
    """Two 1x1 convs lifting the RGB input to the first stage's width, at full resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H, W)
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 conv to the next width, 3x3 depthwise conv with `stride`, 1x1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel_size=3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, H', W', C')
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x).permute(0, 2, 3, 1)


def relative_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) index of |dy| * window_size + |dx| between the N = window_size**2 cells of a window,
    the column of `attention_biases` each pair of cells reads."""
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window_size + dx


class Attention(nn.Module):
    """Pre-norm multi-head self-attention within a window, with a learned bias per head and offset."""

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", relative_offset_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B', N, C), N = window_size**2
        batch, tokens, _ = x.shape
        # the checkpoint's qkv layout is head-major: (head, [q, k, v], head_dim)
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B', heads, N, head_dim)
        # explicit softmax attention in the reference's order of operations: bit-identical results,
        # and no slower on CPU than scaled_dot_product_attention with a float mask
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        x = float32_softmax(attn) @ v  # (B', heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, -1))


class Mlp(nn.Module):
    """Pre-norm feed-forward block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, a 3x3 depthwise conv mixing across windows, then an MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = x + self._window_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        batch, height, width, dim = x.shape
        size = self.window_size
        # zero padding to whole windows; as in the reference, padded cells are attended to
        x = F.pad(x, (0, 0, 0, -width % size, 0, -height % size))
        rows, cols = x.shape[1] // size, x.shape[2] // size
        windows = x.reshape(batch, rows, size, cols, size, dim).transpose(2, 3)
        windows = self.attn(windows.reshape(-1, size * size, dim))  # (B * rows * cols, size**2, C)
        x = windows.view(batch, rows, cols, size, size, dim).transpose(2, 3)
        return x.reshape(batch, rows * size, cols * size, dim)[:, :height, :width]


class ConvStage(nn.Module):
    """MBConv blocks on a (B, C, H, W) map, then patch merging to (B, H', W', C')."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks on (B, H, W, C), then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        return x


class TinyViT(nn.Module):
    """A conv stage and three attention stages, then the SAM neck to `out_chans` channels."""

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_sizes: Sequence[int],
        merge_strides: Sequence[int],
        in_chans: int = 3,
        out_chans: int = 256,
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        merges = [
            PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i]) for i in range(len(depths) - 1)
        ]
        stages: list[nn.Module] = [ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merges[0])]
        stages += [
            AttentionStage(
                embed_dims[i],
                depths[i],
                num_heads[i],
                window_sizes[i],
                mlp_ratio,
                merges[i] if i < len(merges) else None,
            )
            for i in range(1, len(depths))
        ]
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, out_chans, H/4, W/4)
        x = self.patch_embed(x)  # (B, C0, H, W)
        for stage in self.layers:
            x = stage(x)  # (B, H', W', C')
        return self.neck(x.permute(0, 3, 1, 2))
