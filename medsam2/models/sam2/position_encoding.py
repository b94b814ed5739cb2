"""Fixed position encodings of SAM 2: 2D sine maps, 1D sine codes and axial rotary encodings.

None of them has learnt parameters; each is a pure function of a size, computed once per size and
cached by its user. They follow SAM 2's float32 formulas step by step so that the encodings, and
everything downstream of them, match its checkpoints bit for bit.
"""

from __future__ import annotations

import math

import torch


def _inverse_frequencies(num_feats: int, temperature: float, device: torch.device | str | None = None) -> torch.Tensor:
    """(num_feats,) denominators temperature ** (2 * (i // 2) / num_feats) of the sine codes."""
    steps = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (steps // 2) / num_feats)


def sine_position_map(
    channels: int, height: int, width: int, temperature: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """(channels, height, width) DETR-style sine encoding of a grid: rows in the first half of the
    channels, columns in the second, each interleaving sin and cos, positions normalised to (0, 2pi]."""
    num_feats = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device).view(-1, 1).repeat(1, width)  # (H, W)
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device).view(1, -1).repeat(height, 1)
    rows = rows / (rows[-1:, :] + eps) * scale
    cols = cols / (cols[:, -1:] + eps) * scale
    frequencies = _inverse_frequencies(num_feats, temperature, device)

    def interleave(angles: torch.Tensor) -> torch.Tensor:  # (H, W, F) -> (H, W, F)
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=3).flatten(2)

    pos_y = interleave(rows[..., None] / frequencies)
    pos_x = interleave(cols[..., None] / frequencies)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)


def sine_code(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., dim) sine-then-cosine code of scalar positions (the Transformer's 1D encoding)."""
    # computed where the positions are, as SAM 2 does: a copy from the host would wait for the
    # device to finish its queued work on every tracked frame
    frequencies = _inverse_frequencies(dim // 2, temperature, positions.device)
    angles = positions.unsqueeze(-1) / frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def axial_rope_frequencies(dim: int, width: int, height: int, theta: float = 10000.0) -> torch.Tensor:
    """(width * height, dim // 2) complex rotations of a row-major grid: the first half of each head's
    channel pairs turn with the column, the second half with the row."""
    frequencies = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    index = torch.arange(width * height, dtype=torch.float32)
    cols, rows = index % width, torch.div(index, width, rounding_mode="floor")
    angles_x, angles_y = torch.outer(cols, frequencies), torch.outer(rows, frequencies)
    return torch.cat(
        [torch.polar(torch.ones_like(angles_x), angles_x), torch.polar(torch.ones_like(angles_y), angles_y)], dim=-1
    )


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (B, heads, N, C) by rotations (M, C/2, 2) (complex
    numbers as `torch.view_as_real` lays them out), repeated along the tokens when N is a multiple of
    M (keys of several memory frames share the query grid)."""
    if x.shape[-2] == 0:
        return x
    repeats = x.shape[-2] // rotations.shape[0]
    if repeats > 1:
        rotations = rotations.unsqueeze(0).expand(repeats, *rotations.shape).flatten(0, 1)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, heads, N, C/2, 2)
    if torch.compiler.is_compiling():
        # inductor generates no code for complex numbers (each product would be a kernel of its
        # own): the same rotation in real arithmetic fuses with the work around it
        cos, sin = rotations.unbind(-1)  # (N, C/2) each
        real, imag = pairs.unbind(-1)
        rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
        return rotated.flatten(3).type_as(x)
    return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotations)).flatten(3).type_as(x)
