"""Memory attention: the current frame's features attend to themselves and to the memory bank
(spatial memories of earlier frames and object pointers), with 2D rotary position encodings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.sam2.position_encoding import apply_rope, axial_rope_frequencies
from medsam2.models.transformer import Attention

# Memory keys per block when a GPU's cross-attention is split over the keys (see
# `attend_in_key_blocks`): two blocks per frame at 512 px, and with a full bank about one block of
# queries and keys per multiprocessor of an H100.
KEY_BLOCK = 512


class RoPEAttention(Attention):
    """Single-head attention whose queries and keys are rotated by their grid position.

    The keys of the cross-attention are several frames' grids one after the other (each rotated like
    the query grid) followed by `num_k_exclude_rope` object-pointer tokens, which have no position
    on the grid and are not rotated."""

    rotations: torch.Tensor

    def __init__(self, embedding_dim: int, feature_size: int, kv_in_dim: int | None = None, dropout: float = 0.1):
        super().__init__(embedding_dim, num_heads=1, kv_in_dim=kv_in_dim, fused=True, dropout=dropout)
        # stored as real pairs: a complex buffer, even only viewed as real, makes a compiled step
        # lower a complex operator (inductor warns that it generates no code for one)
        rotations = torch.view_as_real(axial_rope_frequencies(embedding_dim, feature_size, feature_size))
        self.register_buffer("rotations", rotations.contiguous(), persistent=False)  # (N, C/2, 2)
        self.split_keys = True  # compiled on a GPU in half precision, attend to many keys in blocks (False: in one piece)

    def forward(  # type: ignore[override]
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q, k, v = self._project(q, k, v)  # (B, 1, N, C)
        rotated = k.shape[-2] - num_k_exclude_rope
        q = apply_rope(q, self.rotations)
        k = torch.cat([apply_rope(k[:, :, :rotated], self.rotations), k[:, :, rotated:]], dim=2)
        # several memory frames' keys: split them where a GPU would otherwise be left mostly idle.
        # Compiled only: run eagerly, the split's extra launches cost more host time than it saves
        # on the GPU (H100, bf16, full bank: 22.9 against 14.3 ms of host time a step, which bounds
        # the eager step; GPU time 1.9 against 2.2 ms)
        split = self.split_keys and rotated > q.shape[2] and rotated % KEY_BLOCK == 0
        if split and q.is_cuda and q.dtype != torch.float32 and not self.training and torch.compiler.is_compiling():
            return self._combine_heads(attend_in_key_blocks(q, k, v, rotated, KEY_BLOCK))
        return self._attend(q, k, v)


def attend_in_key_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_blocked: int, block: int) -> torch.Tensor:
    """Single-head attention of q (B, 1, L, E) over k, v (B, 1, M, E) -> (B, 1, L, E), computed in
    parts side by side: the first `num_blocked` keys (the spatial memories, a multiple of `block`)
    in blocks of `block`, the rest (object pointers) as one more part; the parts' outputs are
    merged with weights from their log-sum-exps, as flash-decoding does. The result is the
    attention over all keys, up to rounding.

    Why: a GPU's flash attention parallelises over blocks of queries (and heads, and the batch).
    SAM 2's cross-attention has one head and 1024 queries at 512 px, so it ran on 8 of an H100's 132
    multiprocessors, each going through all 7,232 keys of a full bank (about 94 us per layer)."""
    batch, _, length, dim = q.shape
    parts = num_blocked // block
    outputs, log_sums = _attention_with_log_sum(
        q.expand(batch, parts, length, dim).contiguous(),  # the keys' blocks as heads
        k[:, :, :num_blocked].reshape(batch, parts, block, dim),
        v[:, :, :num_blocked].reshape(batch, parts, block, dim),
    )  # (B, parts, L, E), (B, parts, L)
    if k.shape[2] > num_blocked:
        rest, rest_log_sum = _attention_with_log_sum(q, k[:, :, num_blocked:], v[:, :, num_blocked:])
        outputs, log_sums = torch.cat([outputs, rest], dim=1), torch.cat([log_sums, rest_log_sum], dim=1)
    weights = torch.softmax(log_sums, dim=1).unsqueeze(-1)  # (B, parts, L, 1), each part's share
    return (outputs.float() * weights).sum(dim=1, keepdim=True).to(q.dtype)


def _attention_with_log_sum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention (B, H, L, E) and the log-sum-exp of each query's scores (B, H, L), float32."""
    if q.is_cuda:
        output, log_sum = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    else:
        output, log_sum = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    return output, log_sum


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
