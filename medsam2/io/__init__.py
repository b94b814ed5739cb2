"""Files in, masks out, with geometry: `load_image`, `save_mask` and the `Volume` they share.

Readers and writers load on first use: code that only needs `Volume` (the engine, training on
arrays) then runs without the imaging libraries they bring (SimpleITK, highdicom), e.g. on a GPU
machine that has only torch."""

from importlib import import_module

from medsam2.io.volume import (
    Modality,
    SliceAxis,
    Volume,
    check_same_geometry,
    from_slices,
    slicing_axis_index,
    to_slices,
)

_LAZY = {
    "SUPPORTED_IMAGE_SUFFIXES": "medsam2.io.readers",
    "load_image": "medsam2.io.readers",
    "SUPPORTED_MASK_SUFFIXES": "medsam2.io.writers",
    "save_mask": "medsam2.io.writers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SUPPORTED_IMAGE_SUFFIXES",
    "SUPPORTED_MASK_SUFFIXES",
    "Modality",
    "SliceAxis",
    "Volume",
    "check_same_geometry",
    "from_slices",
    "load_image",
    "save_mask",
    "slicing_axis_index",
    "to_slices",
]
