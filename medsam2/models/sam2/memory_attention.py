"""Memory attention: the current frame's features attend to themselves and to the memory bank
(spatial memories of earlier frames and object pointers), with 2D rotary position encodings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.sam2.position_encoding import apply_rope, axial_rope_frequencies
from medsam2.models.transformer import Attention


class RoPEAttention(Attention):
    """Single-head attention whose queries and keys are rotated by their grid position.

    The keys of the cross-attention are several frames' grids one after the other (each rotated like
    the query grid) followed by `num_k_exclude_rope` object-pointer tokens, which have no position
    on the grid and are not rotated."""

    rotations: torch.Tensor

    def __init__(self, embedding_dim: int, feature_size: int, kv_in_dim: int | None = None, dropout: float = 0.1):
        super().__init__(embedding_dim, num_heads=1, kv_in_dim=kv_in_dim, fused=True, dropout=dropout)
        rotations = axial_rope_frequencies(embedding_dim, feature_size, feature_size)
        self.register_buffer("rotations", rotations, persistent=False)

    def forward(  # type: ignore[override]
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q, k, v = self._project(q, k, v)  # (B, 1, N, C)
        rotated = k.shape[-2] - num_k_exclude_rope
        q = apply_rope(q, self.rotations)
        k = torch.cat([apply_rope(k[:, :, :rotated], self.rotations), k[:, :, rotated:]], dim=2)
        return self._attend(q, k, v)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the memory (keys carry the memory's position
    encoding, queries none), then a ReLU MLP."""

    def __init__(self, d_model: int, feature_size: int, memory_dim: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = RoPEAttention(d_model, feature_size, dropout=dropout)
        self.cross_attn_image = RoPEAttention(d_model, feature_size, kv_in_dim=memory_dim, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_pointer_tokens: int
    ) -> torch.Tensor:  # x (B, HW, C), memory and memory_pos (B, M, C_mem)
        normed = self.norm1(x)
        x = x + self.dropout(self.self_attn(normed, normed, normed))
        normed = self.norm2(x)
        x = x + self.dropout(self.cross_attn_image(normed, memory + memory_pos, memory, num_pointer_tokens))
        normed = self.norm3(x)
        return x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(normed)))))


class MemoryAttention(nn.Module):
    """A stack of memory-attention layers and a final LayerNorm (`memory_attention.*`)."""

    def __init__(self, d_model: int, feature_size: int, memory_dim: int, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(d_model, feature_size, memory_dim) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        features: torch.Tensor,
        features_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        """features, features_pos (B, HW, C); memory, memory_pos (B, M, C_mem), the last
        `num_pointer_tokens` of M being object pointers -> memory-conditioned features (B, HW, C)."""
        x = features + 0.1 * features_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_pointer_tokens)
        return self.norm(x)
