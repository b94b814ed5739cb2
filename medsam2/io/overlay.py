"""A PNG montage of slices with mask contours and prompt boxes, for a quick look at a result."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medsam2.errors import InputError
from medsam2.io.atomic import atomic_path
from medsam2.io.volume import SliceDisplay, orient_for_display

# The first eight labels in colour-blind-friendly colours (Okabe-Ito); later ones in hues spread by
# the golden angle (a multi-organ map loaded for correction has dozens), starting away from the red
# of prompt boxes, cycled after 256.
OKABE_ITO = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255)]
LABEL_COLOURS = OKABE_ITO + [
    tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb((0.13 + index * 0.381966) % 1.0, 0.7, 0.95))
    for index in range(256 - len(OKABE_ITO))
]
BOX_COLOUR = (255, 40, 40)


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of object id `label` (>= 1), as overlays, videos and the web page draw it."""
    return LABEL_COLOURS[(int(label) - 1) % len(LABEL_COLOURS)]


def check_overlay_output(path: Path | str) -> None:
    """Raise InputError unless `path` names a PNG, the montage's format (checked before long work)."""
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"{path}: the overlay montage is a PNG image; name it .png")


def overlay_slice(
    image: np.ndarray, labels: np.ndarray, box: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """One uint8 slice (H, W) or (H, W, 3) with the contour of each label and an optional box."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image.copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        region = labels == label
        contour = region & ~ndimage.binary_erosion(region, iterations=max(1, image.shape[0] // 256))
        rgb[contour] = label_colour(label)
    tile = Image.fromarray(rgb.astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(tile).rectangle(box, outline=BOX_COLOUR, width=max(1, image.shape[0] // 256))
    return tile


def as_shown(tile: Image.Image, display: SliceDisplay, pixel_spacing: tuple[float, float]) -> Image.Image:
    """A drawn slice as a person should see it: turned as `display` says, and stretched along its
    coarser axis so a millimetre is as long across as down (`pixel_spacing`: mm between the slice's
    columns, between its rows; a coronal slice of 5 mm CT sections would otherwise look five times
    too flat). Nearest neighbour keeps the contour colours as drawn."""
    turned = Image.fromarray(np.ascontiguousarray(orient_for_display(np.asarray(tile), display)))
    across, down = pixel_spacing[::-1] if display.transpose else pixel_spacing
    if across <= 0 or down <= 0 or np.isclose(across, down):
        return turned
    width, height = turned.size
    size = (width, round(height * down / across)) if down > across else (round(width * across / down), height)
    return turned.resize(size, Image.Resampling.NEAREST)


def _evenly(items: list[int], count: int) -> list[int]:
    """At most `count` of `items`, evenly spread from the first to the last."""
    if len(items) <= count:
        return items
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, count)] if count else []


def montage_slices(labels: np.ndarray, boxed: list[int], max_tiles: int) -> list[int]:
    """The slices a montage shows: those that hold an object or a box, at most `max_tiles` of them,
    every boxed one first (what the user gave is always shown), the others evenly picked; the
    middle slice when there is none."""
    shown = sorted({int(k) for k in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))} | set(boxed))
    if not shown:
        return [labels.shape[0] // 2]
    kept = _evenly(boxed, max_tiles)
    return sorted(set(kept) | set(_evenly([k for k in shown if k not in kept], max_tiles - len(kept))))


def save_overlay_montage(
    slices: np.ndarray,
    labels: np.ndarray,
    path: Path | str,
    boxes: dict[int, tuple[float, float, float, float]] | None = None,
    display: SliceDisplay = SliceDisplay(),
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    max_tiles: int = 16,
    tile_size: int = 256,
) -> Path:
    """Write a grid of the slices that hold an object or a box (`montage_slices`), each turned as
    `display` says (`slice_display`), stretched to square millimetres (`pixel_spacing`: mm between
    the slices' columns, between their rows), fitted to `tile_size` (a small one enlarged by a whole
    factor) and captioned with its index, as a PNG."""
    check_overlay_output(path)
    boxes = boxes or {}
    shown = montage_slices(labels, sorted(boxes), max_tiles)
    columns = int(np.ceil(np.sqrt(len(shown))))
    rows = int(np.ceil(len(shown) / columns))
    montage = Image.new("RGB", (columns * tile_size, rows * tile_size))
    for position, index in enumerate(shown):
        tile = as_shown(overlay_slice(slices[index], labels[index], boxes.get(index)), display, pixel_spacing)
        if (scale := tile_size // max(tile.size)) > 1:  # a small slice (a coronal view of a slab) enlarged to be read
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        tile.thumbnail((tile_size, tile_size))
        ImageDraw.Draw(tile).text((4, 4), f"{index}", fill=(255, 255, 0))
        montage.paste(tile, ((position % columns) * tile_size, (position // columns) * tile_size))
    with atomic_path(path) as temporary:
        montage.save(temporary, format="PNG")
    return Path(path)
