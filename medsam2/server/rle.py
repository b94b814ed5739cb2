"""Slice masks as run-length encodings: COCO's uncompressed RLE, ``{"size": [H, W], "counts": [...]}``.

Counts alternate background and object runs over the pixels in column-major order (down the first
column, then the next), starting with background (possibly 0), as pycocotools reads them.
"""

from __future__ import annotations

import numpy as np

from medsam2.errors import InputError


def encode(mask: np.ndarray) -> dict:
    """A (H, W) boolean mask as COCO RLE."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size])))
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts.astype(int).tolist()}


def decode(rle: dict, shape: tuple[int, int]) -> np.ndarray:
    """A COCO RLE of a `shape` slice back to a (H, W) boolean mask; `InputError` if it does not fit."""
    size, counts = rle.get("size"), rle.get("counts")
    if list(size or ()) != list(shape):
        raise InputError(f"mask size {list(size) if size else size} differs from the slice's {list(shape)}")
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise InputError("mask counts must be a list of non-negative whole numbers")
    total = int(np.prod(shape))
    if sum(counts) != total:
        raise InputError(f"mask counts add up to {sum(counts)} pixels, the slice has {total}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(shape, order="F")
