"""Intensities to the 0-255 uint8 images the models were trained on.

Three rules, picked by `to_uint8`:

- ``passthrough``: data already 8-bit (dtype uint8, or integers all within 0..255: PNG/JPEG frames,
  MedSAM/FLARE ``.npz`` files, which are windowed already) is returned unchanged.
- ``window``: CT in Hounsfield units is clipped to a window ``[level - width/2, level + width/2]``
  and scaled linearly to 0..255, as MedSAM2's CT inference does (its scaling then truncates to
  uint8, so the level maps to 127 and the window's ends to 0 and 255). Without a window, CT gets
  the soft-tissue window.
- ``percentile``: MR, PET, ultrasound and anything unknown is clipped to the 0.5 and 99.5 percentiles
  of its foreground and scaled to 0..255. The foreground is every voxel above the image's minimum:
  for the usual non-negative scan with a zero background this is MedSAM's ``> 0`` rule, and it
  still works for data with negative values (z-scored MR).

Scaling runs slice by slice in float64 so that a large volume never needs a float copy of itself.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medsam2.errors import InputError
from medsam2.io.volume import Modality, Volume, parse_modality

log = logging.getLogger(__name__)

# name -> (width, level) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "abdomen": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
}
DEFAULT_CT_WINDOW = "soft_tissue"
FOREGROUND_PERCENTILES = (0.5, 99.5)
# Air is about -1000 HU and scanners pad with -1024 or lower; no other modality goes this negative.
HU_AIR_THRESHOLD = -500.0

_CUSTOM_WINDOW = re.compile(r"^\s*w?\s*(-?\d+(?:\.\d*)?)\s*,\s*l?\s*(-?\d+(?:\.\d*)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """A CT display window in HU."""

    width: float
    level: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.width) and np.isfinite(self.level)) or self.width <= 0:
            raise InputError(f"window W{self.width:g},L{self.level:g}: width must be positive and both finite")

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


@dataclass(frozen=True)
class IntensityMapping:
    """What `to_uint8` did: input values in [low, high] were mapped linearly onto 0..255."""

    kind: Literal["passthrough", "window", "percentile"]
    low: float
    high: float
    modality: Modality


@dataclass(frozen=True)
class MappedImage:
    """The uint8 image (same shape as the input array) and the mapping that produced it."""

    array: np.ndarray
    mapping: IntensityMapping


def parse_window(spec: str) -> Window:
    """A preset name (``lung``, ``soft-tissue``...) or a custom ``"W,L"`` such as ``"400,40"`` or ``"W400,L40"``."""
    key = spec.strip().lower().replace("-", "_").replace(" ", "_")
    if key in WINDOW_PRESETS:
        return Window(*WINDOW_PRESETS[key])
    match = _CUSTOM_WINDOW.match(spec)
    if match is None:
        presets = ", ".join(WINDOW_PRESETS)
        raise InputError(f"window {spec!r}: expected one of {presets} or 'WIDTH,LEVEL' such as '400,40'")
    return Window(width=float(match.group(1)), level=float(match.group(2)))


def apply_window(array: np.ndarray, width: float, level: float) -> np.ndarray:
    """`array` (HU) clipped to the window and scaled to uint8: level -> 127, level -/+ width/2 -> 0/255."""
    window = Window(width, level)
    return _rescale(array, window.low, window.high)


def is_8bit(array: np.ndarray) -> bool:
    """Whether the values are already 0..255 integers (dtype uint8, or any integer-valued array in range)."""
    if array.dtype in (np.uint8, bool):
        return True
    if array.size == 0:
        return False
    if float(array.min()) < 0 or float(array.max()) > 255:
        return False
    return np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))


def guess_modality(volume: Volume) -> Modality:
    """The modality from the file's tag (`Volume.modality`), else ``"CT"`` if the values look like HU.

    Only CT can be told from intensities (air far below zero); anything else keeps the tag it has
    (``"unknown"`` or ``"OT"``).
    """
    if volume.modality not in ("unknown", "OT"):
        return volume.modality
    if volume.array.size and np.issubdtype(volume.array.dtype, np.number):
        if float(np.nanmin(volume.array)) <= HU_AIR_THRESHOLD:
            return "CT"
    return volume.modality


def to_uint8(volume: Volume, window: str | Window | None = None, modality: str | None = None) -> MappedImage:
    """The volume's intensities as uint8 0..255, by the rule described in this module's docstring.

    `window` (a preset name, ``"W,L"`` or a `Window`) is applied whenever given, even to 8-bit data
    (with a warning: such data are windowed already, and a window read as HU changes what the model
    sees: Dice 0.837 -> 0.720 on a MedSAM CT lesion npz with the soft-tissue window); `modality`
    overrides the file's tag and the guess (``CT``, ``MR``/``MRI``, ``PT``/``PET``, ``US``...).
    """
    array = volume.array  # real numbers (a Volume holds nothing else)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise InputError(f"{_name(volume)}: the image contains NaN or infinite values")
    chosen = parse_modality(modality) if modality is not None else guess_modality(volume)

    if window is None and is_8bit(array):
        return MappedImage(array.astype(np.uint8, copy=False), IntensityMapping("passthrough", 0.0, 255.0, chosen))
    if window is None and chosen == "CT":
        window = DEFAULT_CT_WINDOW
    if window is not None:
        window = parse_window(window) if isinstance(window, str) else window
        if is_8bit(array):
            log.warning(
                "%s: the intensities are 0-255 already (windowed, as in MedSAM .npz files, pictures and video "
                "frames); the window W%g,L%g reads them as HU and changes the contrast the model sees: leave it out",
                _name(volume), window.width, window.level,
            )
        mapping = IntensityMapping("window", window.low, window.high, chosen)
    else:
        mapping = IntensityMapping("percentile", *_foreground_percentiles(array), chosen)
    return MappedImage(_rescale(array, mapping.low, mapping.high), mapping)


def _foreground_percentiles(array: np.ndarray) -> tuple[float, float]:
    foreground = array[array > array.min()]
    if foreground.size == 0:  # a constant image: everything maps to 0
        value = float(array.min())
        return value, value
    low, high = np.percentile(foreground, FOREGROUND_PERCENTILES)
    if high <= low:  # a foreground of one value: show it white on the background
        return float(array.min()), float(high)
    return float(low), float(high)


def _rescale(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly onto 0..255, truncating like the reference's ``np.uint8``."""
    span = max(high - low, np.finfo(np.float64).tiny)
    out = np.empty(array.shape, dtype=np.uint8)
    slabs = range(array.shape[0]) if array.ndim > 2 else [Ellipsis]
    for index in slabs:
        scaled = (np.clip(array[index].astype(np.float64), low, high) - low) / span * 255.0
        out[index] = scaled.astype(np.uint8)
    return out


def _name(volume: Volume) -> str:
    return str(volume.source) if volume.source else "image"
