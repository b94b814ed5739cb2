"""SAM's prompt encoder: points and boxes to sparse tokens, a mask to a dense embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from medsam2.models.common import LayerNorm2d

NOT_A_POINT = -1
BACKGROUND_POINT = 0
FOREGROUND_POINT = 1
BOX_TOP_LEFT = 2
BOX_BOTTOM_RIGHT = 3


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) positions with a fixed random Gaussian frequency matrix."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:  # (..., 2) in [0, 1] -> (..., 2F)
        coords = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([coords.sin(), coords.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:  # -> (2F, H, W) at pixel centres
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel (x, y) in an image of `image_size` (H, W) -> (B, N, 2F)."""
        height, width = image_size
        # divided by Python numbers, as SAM does: CUDA multiplies by their reciprocal, which rounds
        # differently from a division by a tensor
        x, y = coords.float().unbind(-1)
        return self._encode(torch.stack([x / width, y / height], dim=-1))


class PromptEncoder(nn.Module):
    """Encodes points, boxes and a mask for the mask decoder.

    Sparse tokens are the points (in order), then each box as its two corners; a prompt with points
    but no box gets one extra "not a point" token, as in SAM.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # indexed by label: background point, foreground point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:  # (1, C, h, w) for the image embedding grid
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def forward(
        self,
        batch_size: int,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 2) pixel (x, y) with point_labels (B, N) in {-1, 0, 1}; boxes (B, 4)
        x0, y0, x1, y1; masks (B, 1, 4h, 4w) logits -> sparse (B, T, C), dense (B, C, h, w)."""
        device = self.no_mask_embed.weight.device
        coords: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels")
            coords.append(points)
            labels.append(point_labels)
            if boxes is None:
                coords.append(torch.zeros(batch_size, 1, 2, device=device))
                labels.append(torch.full((batch_size, 1), NOT_A_POINT, device=device))
        if boxes is not None:
            coords.append(boxes.reshape(batch_size, 2, 2))
            corners = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=device)
            labels.append(corners.expand(batch_size, 2))
        if coords:
            sparse = self._embed_tokens(torch.cat(coords, dim=1), torch.cat(labels, dim=1))
        else:
            sparse = torch.empty(batch_size, 0, self.embed_dim, device=device)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            height, width = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, height, width)
        return sparse, dense

    def _embed_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, T, 2) pixel coordinates with (B, T) labels -> (B, T, C)."""
        embedding = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # pixel centres
        label_embeddings = torch.cat(
            [self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings]
        )  # (5, C), row = label + 1
        is_padding = (labels == NOT_A_POINT).unsqueeze(-1)
        return embedding.masked_fill(is_padding, 0.0) + label_embeddings[labels.long() + 1]
