"""Label maps in: mask files, and the masks stored beside the image in MedSAM npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam2.errors import InputError
from medsam2.io.readers import load_image
from medsam2.io.volume import Volume

# npz keys holding a label map, in order of preference: our output, then ground truth.
NPZ_MASK_KEYS = ("segs", "gts")


def stored_array(volume: Volume, key: str) -> np.ndarray | None:
    """An array stored beside the image of an npz volume (``gts``, ``recist``...), in the volume's
    (Z, Y, X) layout; None if the file had no such key."""
    array = volume.meta.get("npz", {}).get(key)
    if array is None:
        return None
    array = np.asarray(array)
    return array[None] if volume.meta.get("is_2d") and array.ndim == 2 else array


def load_mask(path: Path | str) -> Volume:
    """A label map from any image format; from an npz, its ``segs`` (else ``gts``) array."""
    volume = load_image(path)
    if volume.source is not None and volume.source.suffix.lower() == ".npz":
        key = next((k for k in NPZ_MASK_KEYS if k in volume.meta.get("npz", {})), None)
        if key is None:
            raise InputError(f"{path}: no mask in this npz (expected a 'segs' or 'gts' array)")
        volume = volume.with_array(stored_array(volume, key))
    array = volume.array
    if volume.is_color:
        raise InputError(f"{path}: a colour image is not a label map")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise InputError(f"{path}: not a label map (non-integer values)")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: not a label map (negative values)")
    return volume if array.dtype == bool or np.issubdtype(array.dtype, np.integer) else volume.with_array(array.astype(np.int32))
