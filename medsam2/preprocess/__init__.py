"""Windowing and normalisation to uint8, resizing to a model's input and mapping results back."""

from medsam2.preprocess.intensity import (
    DEFAULT_CT_WINDOW,
    WINDOW_PRESETS,
    IntensityMapping,
    MappedImage,
    Window,
    apply_window,
    guess_modality,
    is_8bit,
    parse_window,
    to_uint8,
)
from medsam2.preprocess.resize import IMAGENET_MEAN, IMAGENET_STD, LongestSideResize, SliceResize, SquareResize

__all__ = [
    "DEFAULT_CT_WINDOW",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WINDOW_PRESETS",
    "IntensityMapping",
    "LongestSideResize",
    "MappedImage",
    "SliceResize",
    "SquareResize",
    "Window",
    "apply_window",
    "guess_modality",
    "is_8bit",
    "parse_window",
    "to_uint8",
]
