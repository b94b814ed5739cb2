"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

SAM 2's mask decoder uses the same transformer with two differences, chosen by `layout="sam2"`: its
MLPs are named `layers.0` / `layers.1` in the checkpoints, and its attention runs through
`F.scaled_dot_product_attention`. The two ways of computing attention round float32 differently;
each family's checkpoints are reproduced bit for bit only by the one it was published with.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medsam2.models.common import MLP, MLPBlock, float32_softmax

Layout = Literal["sam", "sam2"]


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`; keys and
    values may come from inputs of another width (`kv_in_dim`, SAM 2's memories).

    `fused` attends with `F.scaled_dot_product_attention` (SAM 2; `dropout` applies in training),
    otherwise with an explicit softmax in SAM's order of operations."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        *,
        kv_in_dim: int | None = None,
        fused: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {internal_dim}")
        kv_in_dim = kv_in_dim or embedding_dim
        self.num_heads = num_heads
        self.fused = fused
        self.dropout = dropout
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(kv_in_dim, internal_dim)
        self.v_proj = nn.Linear(kv_in_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def _project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._separate_heads(proj(x)) for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head q (B, heads, Nq, c), k, v (B, heads, Nk, c) -> projected output (B, Nq, C)."""
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            # explicit softmax attention in the reference's order of operations (bit-identical results)
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, Nq, Nk)
            out = float32_softmax(attn) @ v  # (B, heads, Nq, C/heads)
        return self._combine_heads(out)

    def _combine_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Per-head outputs (B, heads, Nq, c) -> projected output (B, Nq, C)."""
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._attend(*self._project(q, k, v))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image cross-attention, token MLP, image -> tokens
    cross-attention; each followed by a residual add and a LayerNorm."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
        layout: Layout = "sam",
    ) -> None:
        super().__init__()
        fused = layout == "sam2"
        self.self_attn = Attention(embedding_dim, num_heads, fused=fused)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate, fused=fused)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2) if fused else MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate, fused=fused)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # queries (B, Nq, C), keys (B, HW, C)
        if self.skip_first_layer_pe:
            # the first layer's queries are the prompt embeddings themselves: no residual, no PE
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks, then a last attention of the tokens to the image."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        layout: Layout = "sam",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                layout=layout,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate, fused=layout == "sam2"
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe (B, C, H, W); point_embedding (B, Nq, C) ->
        processed tokens (B, Nq, C) and image tokens (B, HW, C)."""
        keys = image_embedding.flatten(2).transpose(1, 2)  # (B, HW, C)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
