"""Small building blocks shared by the encoder, prompt encoder and mask decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def float32_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis computed in float32, returned in the scores' dtype; the same as
    `softmax` for float32. oneDNN Graph fuses bfloat16 attention and would otherwise keep the
    softmax in bfloat16: attention outputs drifted 20x further from float32 than unfused bfloat16."""
    return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, as in SAM and ConvNeXt."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer feed-forward block of a transformer layer."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """`num_layers` linear layers with an activation (ReLU unless given) between them: SAM's
    prediction heads, and SAM 2's feed-forward blocks."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.relu,
    ) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])
        )
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
