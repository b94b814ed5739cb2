"""Prompts: what a user gives on one slice for one object, in voxel coordinates of that slice.

Coordinates are (x, y) = (column, row) of the slice as the session sees it (after choosing the slicing
axis); boxes are (x_min, y_min, x_max, y_max), inclusive pixel indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from medsam2.errors import InputError
from medsam2.wording import counted

# Label maps are uint16: object ids beyond this cannot be written.
MAX_OBJECT_ID = 65535
# Clicks one object may hold on one slice. The decoder's token attention grows with their square
# (100,000 clicks asked a server for 320 GB); no one annotates with more than a few dozen.
MAX_CLICKS = 100


@dataclass(frozen=True)
class Prompt:
    """One interaction: a box, points with labels (1 = object, 0 = background), and/or a mask."""

    slice_index: int
    obj_id: int = 1
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = None  # (H, W) bool
    name: str | None = None

    def __post_init__(self) -> None:
        # numpy's integers as Python's: they show as np.int64(4) in messages and lists of slices
        for name in ("slice_index", "obj_id"):
            if isinstance(getattr(self, name), np.integer):
                object.__setattr__(self, name, int(getattr(self, name)))
        # Lists, numpy arrays and tensors as the tuples and bool mask the engine reads.
        where = f"prompt on slice {self.slice_index} (object {self.obj_id})"
        try:
            if self.box is not None:
                object.__setattr__(self, "box", tuple(float(v) for v in np.asarray(self.box, dtype=float).ravel()))
            points = np.asarray(self.points, dtype=float)
            if points.size and (points.ndim != 2 or points.shape[1] != 2):
                raise InputError(f"{where}: points are pairs x,y (an (N, 2) array), got shape {points.shape}")
            object.__setattr__(self, "points", tuple((float(x), float(y)) for x, y in points.reshape(-1, 2)))
            object.__setattr__(self, "labels", tuple(whole_number(v, "point label") for v in np.asarray(self.labels).ravel()))
        except InputError as error:
            raise InputError(error if str(error).startswith(where) else f"{where}: {error}") from None
        except (TypeError, ValueError):
            raise InputError(f"{where}: a box is 4 numbers x1,y1,x2,y2, a point 2 numbers x,y, a label 1 (object) or 0 (background)") from None
        if self.mask is not None:
            object.__setattr__(self, "mask", _binary_mask(self.mask, where))

    @property
    def erases(self) -> bool:
        """An empty mask alone: the object is not on this slice (an anchor propagation starts nothing from)."""
        return self.mask is not None and not self.mask.any() and self.box is None and not self.points

    @property
    def only_background(self) -> bool:
        """Background clicks alone: they take area off a mask already there and show nothing of the object."""
        return self.box is None and self.mask is None and bool(self.labels) and 1 not in self.labels

    def validate(
        self, num_slices: int | None, height: int | None, width: int | None, unit: str = "slice", where: str | None = None
    ) -> None:
        """Raise `InputError` (one line) if the prompt does not fit a (num_slices, height, width) stack
        (of video frames when `unit` is ``"frame"``). None for the sizes: not known yet (a manifest
        checked before its images are read), so only what holds for any size is checked. `where`:
        how the message names the prompt (by default its slice and object)."""
        where = where or f"prompt on {unit} {self.slice_index} (object {self.obj_id})"
        for number, what in ((self.slice_index, f"the {unit} index"), (self.obj_id, "the object id")):
            if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
                raise InputError(f"{where}: {what} must be a whole number, not {type(number).__name__}")
        if num_slices is None and self.slice_index < 0:
            raise InputError(f"{where}: {unit} indices start at 0")
        if num_slices is not None and not 0 <= self.slice_index < num_slices:
            raise InputError(f"{where}: {unit} out of range 0..{num_slices - 1}")
        if not 1 <= self.obj_id <= MAX_OBJECT_ID:
            raise InputError(f"{where}: object ids run from 1 to {MAX_OBJECT_ID}")
        if self.box is None and not self.points and self.mask is None:
            raise InputError(f"{where}: give a box, points or a mask")
        size_known = height is not None and width is not None
        extent = f"{width}x{height} {unit} (x 0..{width - 1}, y 0..{height - 1})" if size_known else f"{unit} (coordinates start at 0)"  # type: ignore[operator]
        if self.box is not None:
            if len(self.box) != 4:
                raise InputError(f"{where}: a box needs 4 numbers x1,y1,x2,y2, got {len(self.box)}")
            if not np.isfinite(self.box).all():
                raise InputError(f"{where}: box {_shown(self.box)} holds a number that is not finite")
            x1, y1, x2, y2 = self.box
            if x2 <= x1 or y2 <= y1:
                raise InputError(f"{where}: box {_shown(self.box)} is inverted or empty (need x1<x2, y1<y2)")
            if x1 < 0 or y1 < 0 or (size_known and (x2 > width - 1 or y2 > height - 1)):  # type: ignore[operator]
                raise InputError(f"{where}: box {_shown(self.box)} reaches outside the {extent}")
        if len(self.points) != len(self.labels):
            raise InputError(f"{where}: {counted(len(self.points), 'point')} but {counted(len(self.labels), 'label')}")
        if len(self.points) > MAX_CLICKS:
            raise InputError(f"{where}: {len(self.points)} clicks, more than the {MAX_CLICKS} a slice may hold")
        if any(len(point) != 2 for point in self.points):
            raise InputError(f"{where}: each point needs 2 numbers x,y")
        for (x, y), label in zip(self.points, self.labels):
            if not np.isfinite((x, y)).all():
                raise InputError(f"{where}: point ({x:g}, {y:g}) holds a number that is not finite")
            if x < 0 or y < 0 or (size_known and (x > width - 1 or y > height - 1)):  # type: ignore[operator]
                raise InputError(f"{where}: point ({x:g}, {y:g}) lies outside the {extent}")
            if label not in (0, 1):
                raise InputError(f"{where}: point label {label} must be 1 (object) or 0 (background)")
        if self.mask is not None:
            if size_known and self.mask.shape != (height, width):
                raise InputError(f"{where}: mask shape {self.mask.shape} differs from the {unit}'s {(height, width)}")
            if not self.mask.any() and not self.erases:
                raise InputError(f"{where}: an empty mask goes alone (it takes the object off the slice), not with a box or clicks")


def whole_number(value: object, what: str) -> int:
    """`value` as an index, id or label: 2, 2.0 or np.int64(2) are 2; 2.5, NaN, "2" or True are a
    one-line error naming `what` (int() would make 2.5 slice 2, and True object 1)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise InputError(f"{what} must be a whole number, got {json.dumps(value, default=repr)}")
    return int(value)


def number_within(value: object, what: str, low: float, high: float = float("inf"), whole: bool = False) -> float:
    """`value` (a setting) as a number from `low` to `high`, a whole one with `whole`; else a
    one-line error naming `what` (NaN, "5", 2.5 slices)."""
    if whole:
        number: float = whole_number(value, what)
    else:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise InputError(f"{what} must be a finite number, got {json.dumps(value, default=repr)}")
        number = float(value)
    if not low <= number <= high:
        shown = [str(int(x)) if float(x).is_integer() else f"{x:g}" for x in (number, low, high)]
        raise InputError(f"{what} {shown[0]} must lie within {shown[1]}..{shown[2]}")
    return number


def _binary_mask(mask: object, where: str) -> np.ndarray:
    """A mask prompt as bool: non-zero is the object; fractions (a probability map) are refused,
    not taken whole (every value above 0 was the object: the whole slice)."""
    try:
        array = np.asarray(mask)
    except (TypeError, ValueError):
        raise InputError(f"{where}: a mask is an (H, W) array of 0 and 1") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{where}: a mask is an (H, W) array of 0 and 1, not of {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isin(array, (0.0, 1.0)).all():
        raise InputError(f"{where}: a mask holds 0 and 1 only, not fractions (threshold a probability map first: probabilities > 0.5)")
    return array if array.dtype == bool else array != 0  # a bool mask as it is: a loaded label map is not copied per slice


def _shown(values: tuple[float, ...]) -> str:
    """Coordinates as a user typed them: [600, 273.5, 700, 322], not [600.0, 273.5, ...]."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def box_from_mask(
    mask: np.ndarray, margin: float | tuple[float, float] = 0.0
) -> tuple[float, float, float, float] | None:
    """Bounding box (x_min, y_min, x_max, y_max) of a 2D mask, grown by `margin` pixels on each side
    (one number, or (along x, along y)) and clipped to the slice; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    margin_x, margin_y = margin if isinstance(margin, tuple) else (margin, margin)
    height, width = mask.shape
    return (
        max(cols[0] - margin_x, 0.0),
        max(rows[0] - margin_y, 0.0),
        min(cols[-1] + margin_x, width - 1.0),
        min(rows[-1] + margin_y, height - 1.0),
    )


def recist_to_box(
    line: tuple[float, float, float, float], height: int, width: int
) -> tuple[float, float, float, float]:
    """A RECIST line (x1, y1, x2, y2) as the square box MedSAM2's lesion workflow uses: centred on
    the line's midpoint, side = the line's length, clipped to the slice."""
    x1, y1, x2, y2 = line
    if (x1, y1) == (x2, y2):
        raise InputError(f"RECIST line ({x1:g}, {y1:g})-({x2:g}, {y2:g}) has no length: its two ends are one point")
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = float(np.hypot(x2 - x1, y2 - y1)) / 2
    return (max(cx - half, 0.0), max(cy - half, 0.0), min(cx + half, width - 1.0), min(cy + half, height - 1.0))


def recist_line_from_marker(marker: np.ndarray) -> tuple[int, tuple[float, float, float, float]]:
    """(slice index, (x1, y1, x2, y2)) of a RECIST marker volume (non-zero pixels drawn along the
    line on one slice, as in MedSAM/FLARE npz files): the end points are the marker pixels furthest
    apart along the line's principal direction."""
    slices = np.flatnonzero(marker.reshape(marker.shape[0], -1).any(axis=1))
    if slices.size == 0:
        raise InputError("the RECIST marker is empty")
    slice_index = int(slices[np.argmax([np.count_nonzero(marker[s]) for s in slices])])
    rows, cols = np.nonzero(marker[slice_index])
    xy = np.stack([cols, rows], axis=1).astype(float)
    centred = xy - xy.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(xy) > 1 else np.array([1.0, 0.0])
    along = centred @ axis
    start, end = xy[np.argmin(along)], xy[np.argmax(along)]
    return slice_index, (start[0], start[1], end[0], end[1])
