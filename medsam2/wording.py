"""Small helpers for the sentences front ends print."""

from __future__ import annotations


def counted(count: float, noun: str) -> str:
    """``"1 voxel"``, ``"3 voxels"``, ``"0.5 minutes"``: a count with its noun in the right number
    (regular plurals); a float as short as it reads (``1.0`` is ``"1"``)."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {noun}{'' if count == 1 else 's'}"
