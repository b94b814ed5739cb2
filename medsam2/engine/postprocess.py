"""Clean-up of a propagated 3D mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (26-connected in 3D, 8 in 2D)."""
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labelled, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice (a 3D fill would miss holes open towards another slice)."""
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask]) if mask.ndim == 3 else ndimage.binary_fill_holes(mask)
