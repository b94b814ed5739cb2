"""Small helpers for the sentences front ends print."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``"1 voxel"``, ``"3 voxels"``: a count with its noun in the right number (regular plurals)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
