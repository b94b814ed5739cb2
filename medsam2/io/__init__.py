"""Files in, masks out, with geometry: `load_image`, `load_mask`, `save_mask` and the `Volume` they share."""

from medsam2.io.masks import load_mask
from medsam2.io.readers import SUPPORTED_IMAGE_SUFFIXES, load_image
from medsam2.io.volume import (
    Modality,
    SliceAxis,
    Volume,
    check_same_geometry,
    from_slices,
    slicing_axis_index,
    to_slices,
)
from medsam2.io.writers import SUPPORTED_MASK_SUFFIXES, save_mask

__all__ = [
    "SUPPORTED_IMAGE_SUFFIXES",
    "SUPPORTED_MASK_SUFFIXES",
    "Modality",
    "SliceAxis",
    "Volume",
    "check_same_geometry",
    "from_slices",
    "load_image",
    "load_mask",
    "save_mask",
    "slicing_axis_index",
    "to_slices",
]
