"""The `Volume`: an image array with its physical geometry.

Axis convention (used everywhere in medsam2)
--------------------------------------------
``Volume.array`` is indexed ``[k, i, j]`` = ``[slice, row, column]`` (SimpleITK's ``GetArrayFromImage``
order, a.k.a. ``(Z, Y, X)``). Colour 2D images and video frames carry a trailing channel axis
``[k, i, j, c]``. The geometry follows ITK/DICOM, in the LPS patient frame and in *index* order
``(x, y, z)`` = ``(column, row, slice)``:

- ``spacing``   (sx, sy, sz) in mm: step along a column index, a row index, a slice index;
- ``origin``    (ox, oy, oz) in mm: world position of voxel ``[0, 0, 0]``;
- ``direction`` 3x3, column ``d`` is the world direction of index axis ``d`` (x, y, z).

World position of voxel ``[k, i, j]``: ``origin + direction @ (spacing * (j, i, k))``.

This is the layout of SimpleITK images, of MedSAM/FLARE ``.npz`` files (whose ``spacing`` is already
in (x, y, z) order) and of DICOM. NIfTI files are read through SimpleITK, which converts RAS to LPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from nibabel.orientations import io_orientation

from medsam2.errors import InputError

# DICOM Modality values: CT, MR, PET, nuclear medicine (SPECT), ultrasound, angiography, radiography
# (computed, digital, mammography), endoscopy, other.
Modality = Literal["CT", "MR", "PT", "NM", "US", "XA", "CR", "DX", "MG", "ES", "OT", "unknown"]
SliceAxis = Literal["axial", "coronal", "sagittal"]
# What users write for them: DICOM's codes, and the names people say.
MODALITY_NAMES: dict[str, Modality] = {
    "CT": "CT", "MR": "MR", "MRI": "MR", "PT": "PT", "PET": "PT", "NM": "NM", "SPECT": "NM", "US": "US",
    "XA": "XA", "CR": "CR", "DX": "DX", "MG": "MG", "ES": "ES", "OT": "OT", "UNKNOWN": "unknown",
}  # fmt: skip


def parse_modality(name: str) -> Modality:
    """A modality as a user wrote it (any case; "PET", "MRI" and "SPECT" too), or a one-line error."""
    try:
        return MODALITY_NAMES[name.strip().upper()]
    except KeyError:
        raise InputError(f"modality {name!r}: choose one of {', '.join(MODALITY_NAMES)}") from None


def geometry_vector(values: object, name: str, length: int) -> tuple[float, ...]:
    """`values` as `length` finite floats (spacing: > 0; direction: the 9 cosines of a rotation), or
    a one-line error naming `name` and what was given."""
    try:
        vector = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        vector = np.array([np.nan])
    positive = name == "spacing"
    # One line whatever was given (an array's repr spans several)
    given = " ".join(repr(values).split()) if vector.size != length or not np.isfinite(vector).all() else str([round(v, 6) for v in vector.tolist()])
    if vector.size != length or not np.isfinite(vector).all() or (positive and (vector <= 0).any()):
        raise InputError(f"'{name}' should be {length} finite numbers{' > 0' if positive else ''}, got {given}")
    if name == "direction" and not np.allclose(vector.reshape(3, 3) @ vector.reshape(3, 3).T, np.eye(3), atol=1e-3):
        raise InputError(f"'direction' should be a rotation (orthonormal 3x3 direction cosines, row-major), got {given}")
    return tuple(vector.tolist())


# eq=False: arrays do not compare as one truth value; volumes are compared by what they hold
# (`check_same_geometry`, np.array_equal on their arrays), == and hash are the object's identity.
@dataclass(frozen=True, eq=False)
class Volume:
    """An image (3D, or 2D as one slice) and the geometry that places it in the patient."""

    array: np.ndarray  # (Z, Y, X) or (Z, Y, X, C)
    # (sx, sy, sz) mm; not given: 1 mm, a pixel, with has_spacing False.
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm of voxel [0, 0, 0]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # 3x3 row-major
    modality: Modality = "unknown"
    source: Path | None = None
    # False when the file gives no spacing (PNG/JPEG, an npz without "spacing"): the 1 mm default is
    # a pixel, and sizes in mm or mL would mean nothing. Not given: whether `spacing` was.
    has_spacing: bool | None = None
    # Format-specific extras the writers need to mirror the input (npz keys, DICOM datasets...).
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Readers make only these; a Volume built in Python with anything else would fail deep in
        # the model, or be written as a file with NaN geometry.
        if not isinstance(self.array, np.ndarray):
            raise InputError(f"Volume.array must be a numpy array, not {type(self.array).__name__}")
        if not is_slice_stack(self.array):
            raise InputError(
                f"Volume.array has shape {self.array.shape}; a Volume holds (Z, Y, X), or (Z, Y, X, 3) in colour "
                "(a 2D image is one slice: array[None])"
            )
        if self.source is not None and not isinstance(self.source, Path):
            object.__setattr__(self, "source", Path(self.source))  # a str given: the Path the hint says
        where = f"{self.source}: " if self.source is not None else "Volume: "
        if self.has_spacing is None:
            object.__setattr__(self, "has_spacing", self.spacing is not None)
        if self.spacing is None:
            object.__setattr__(self, "spacing", (1.0, 1.0, 1.0))
        numeric = np.issubdtype(self.array.dtype, np.number) and not np.issubdtype(self.array.dtype, np.complexfloating)
        if not (numeric or self.array.dtype == bool):
            raise InputError(f"{where}intensities of type {self.array.dtype} are not real numbers")
        try:
            for name, length in (("spacing", 3), ("origin", 3), ("direction", 9)):
                object.__setattr__(self, name, geometry_vector(getattr(self, name), name, length))
            object.__setattr__(self, "modality", parse_modality(str(self.modality)))
        except InputError as error:
            raise InputError(f"{where}{error}") from None


    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X): slices, rows, columns."""
        return tuple(self.array.shape[:3])  # type: ignore[return-value]

    @property
    def is_color(self) -> bool:
        return self.array.ndim == 4

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_world(self, kij: np.ndarray) -> np.ndarray:
        """World (LPS, mm) positions of voxel indices given as rows of (k, i, j)."""
        kij = np.atleast_2d(np.asarray(kij, dtype=float))
        xyz_index = kij[:, ::-1] * np.asarray(self.spacing)
        return np.asarray(self.origin) + xyz_index @ self.direction_matrix.T

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same geometry around another array of the same (Z, Y, X) shape (a mask, say)."""
        if tuple(array.shape[:3]) != self.shape:
            raise InputError(f"array shape {array.shape} does not match the volume's (Z, Y, X) {self.shape}")
        return replace(self, array=array)


def is_slice_stack(array: np.ndarray) -> bool:
    """Whether `array` is shaped as a stack of slices: (Z, Y, X), or (Z, Y, X, 3) in colour."""
    return array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)


def check_same_geometry(a: Volume, b: Volume, what: str, tolerance: float = 1e-3) -> None:
    """Raise `InputError` unless `b` overlays `a` voxel for voxel.

    Same (Z, Y, X) shape, and spacing, origin and direction equal within `tolerance` (mm for spacing
    and origin). `what` names the pair in the message, e.g. ``"gt.nii.gz vs ct.nii.gz"``.
    """
    if a.shape != b.shape:
        raise InputError(f"{what}: shape (Z, Y, X) differs: {a.shape} vs {b.shape}")
    for name in ("spacing", "origin", "direction"):
        ours, theirs = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if not np.allclose(ours, theirs, rtol=0.0, atol=tolerance):
            raise InputError(f"{what}: {name} differs: {_geometry_text(a, name, ours)} vs {_geometry_text(b, name, theirs)}")


def in_storage_order_of(volume: Volume, like: Volume) -> Volume:
    """`volume` with its voxels rearranged (axes swapped, flipped) into the storage order of `like`,
    where its axes are `like`'s in another order or sense (a mask saved as RAS for an LPS scan): the
    same voxels in the same places. As it is where its axes already run as `like`'s, or where no such
    rearrangement lines them up (the geometry check that follows then says what differs)."""
    if np.allclose(volume.direction, like.direction, atol=1e-3):
        return volume
    relation = volume.direction_matrix.T @ like.direction_matrix  # [b, a]: volume index axis b . like axis a
    if not np.allclose(np.abs(relation), np.eye(3)[np.argmax(np.abs(relation), axis=0)].T, atol=1e-3):
        return volume
    source = np.argmax(np.abs(relation), axis=0)  # like's index axis a (x, y, z) is volume's axis source[a]
    if len(set(source.tolist())) != 3 or volume.array.ndim != 3:
        return volume
    signs = np.sign(relation[source, np.arange(3)])
    # array axes run (z, y, x): array axis k holds index axis 2 - k
    array = np.transpose(volume.array, [2 - source[2 - k] for k in range(3)])
    sizes = np.asarray(volume.shape[::-1])  # along index axes x, y, z
    start = np.zeros(3)  # the volume's index that becomes the first voxel
    for axis in range(3):
        if signs[axis] < 0:
            array = np.flip(array, axis=2 - axis)
            start[source[axis]] = sizes[source[axis]] - 1
    spacing = np.asarray(volume.spacing)
    origin = np.asarray(volume.origin) + volume.direction_matrix @ (start * spacing)
    direction = volume.direction_matrix[:, source] * signs
    return replace(
        volume, array=np.ascontiguousarray(array), spacing=tuple(spacing[source].tolist()),
        origin=tuple(origin.tolist()), direction=tuple(direction.flatten().tolist()),
    )


def _geometry_text(volume: Volume, name: str, values: np.ndarray) -> object:
    # The 1 mm a file without spacing gets is not its spacing: saying so names the real difference.
    return "none in its file" if name == "spacing" and not volume.has_spacing else np.round(values, 4).tolist()


_WORLD_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def index_axes_in_world(volume: Volume) -> np.ndarray:
    """For each index axis d (x, y, z): the LPS world axis it runs along and its sign, as rows of
    (world axis, +1 or -1).

    Each index axis gets a world axis of its own (nibabel's `io_orientation`: the closest match
    first), so even a strongly oblique scan, whose axes are each nearest the same world axis, has
    one axial, one coronal and one sagittal slicing axis.
    """
    affine = np.eye(4)
    affine[:3, :3] = volume.direction_matrix
    orientation = io_orientation(affine)
    return np.column_stack([orientation[:, 0].astype(int), orientation[:, 1].astype(int)])


def slicing_axis_index(volume: Volume, axis: SliceAxis) -> int:
    """Which array axis (0, 1 or 2) to step through to get `axis` slices.

    Chosen from the direction cosines, so an image stored sagittally still gives axial slices
    when asked for axial: axial slices are stacked along world z (LPS S), coronal along world y (P),
    sagittal along world x (L). One slice (a picture, a single DICOM image) is always taken in its
    own plane: across it, every slice would be a line of pixels.
    """
    if axis not in _WORLD_AXES:
        raise InputError(f"axis must be one of {', '.join(_WORLD_AXES)}, not {axis!r}")
    if volume.shape[0] == 1:
        return 0
    # Index axis d (x, y, z) is array axis 2 - d.
    index_axis_xyz = int(np.flatnonzero(index_axes_in_world(volume)[:, 0] == _WORLD_AXES[axis])[0])
    return 2 - index_axis_xyz


def slice_pixel_spacing(volume: Volume, axis_index: int) -> tuple[float, float]:
    """(mm between columns, mm between rows) of the slices along array axis `axis_index`."""
    spacing_zyx = volume.spacing[::-1]
    rows_axis, columns_axis = (a for a in range(3) if a != axis_index)
    return float(spacing_zyx[columns_axis]), float(spacing_zyx[rows_axis])


def to_slices(array: np.ndarray, axis_index: int) -> np.ndarray:
    """View of a (Z, Y, X[, C]) array with the slicing axis first (a view, no copy)."""
    return np.moveaxis(array, axis_index, 0)


def from_slices(array: np.ndarray, axis_index: int) -> np.ndarray:
    """Inverse of `to_slices`."""
    return np.moveaxis(array, 0, axis_index)


# Where each screen direction points in the patient (LPS world axis, sign), as radiologists look at
# slices: axial from the feet (patient's right on the screen's left, anterior up), coronal from the
# front (right on the left, head up), sagittal from the patient's left (anterior on the left, head up).
_SCREEN_DOWN_AND_RIGHT = {
    "axial": ((1, +1), (0, +1)),  # down: posterior, right: patient's left
    "coronal": ((2, -1), (0, +1)),  # down: inferior, right: patient's left
    "sagittal": ((2, -1), (1, +1)),  # down: inferior, right: posterior
}


@dataclass(frozen=True)
class SliceDisplay:
    """How a slice as `to_slices` gives it (rows, columns in array order) is turned for the screen:
    transposed first, then flipped. Engines and prompts keep the slice's own pixel coordinates; only
    what a person looks at (the web app, overlay montages) is turned."""

    transpose: bool = False
    flip_rows: bool = False  # upside down, after any transpose
    flip_columns: bool = False  # left-right, after any transpose


def slice_display(volume: Volume, axis: SliceAxis) -> SliceDisplay:
    """The turn that shows `axis` slices of `volume` as radiologists look at them (see
    `_SCREEN_DOWN_AND_RIGHT`), whatever order the file stores its axes in: a RAS NIfTI's axial slices
    are turned by 180 degrees, coronal slices of any scan put the head up, a sagittally stored scan's
    axial slices are transposed. Slices without patient geometry (videos, pictures) are shown as stored."""
    axis_index = slicing_axis_index(volume, axis)
    rows_axis, columns_axis = (a for a in range(3) if a != axis_index)
    # Array axis a is index axis 2 - a.
    world = index_axes_in_world(volume)
    (_, rows_sign), (columns_world, columns_sign) = world[2 - rows_axis], world[2 - columns_axis]
    (down, down_sign), (_, right_sign) = _SCREEN_DOWN_AND_RIGHT[axis]
    transpose = bool(columns_world == down)
    if transpose:
        rows_sign, columns_sign = columns_sign, rows_sign
    return SliceDisplay(
        transpose=transpose,
        flip_rows=bool(rows_sign * down_sign < 0),
        flip_columns=bool(columns_sign * right_sign < 0),
    )


# The order radiologists step through slices in, as the sign of the next slice along the LPS world
# axis: axial from head to feet (-S), coronal from front to back (+P), sagittal from the patient's
# right to his left (+L).
_READING_SIGN = {"axial": -1, "coronal": +1, "sagittal": +1}


def reading_step(volume: Volume, axis: SliceAxis) -> int:
    """The change of slice number from one `axis` slice to the next in reading order: +1, or -1 where
    the file stores them the other way (a RAS NIfTI's or a DICOM series' axial slices run from the
    feet up). Viewers step by it, so that the same key goes the same way through the patient
    whatever the file's order; the numbers stay the file's, as prompts use them."""
    _, along_slices = index_axes_in_world(volume)[2 - slicing_axis_index(volume, axis)]
    return 1 if along_slices * _READING_SIGN[axis] > 0 else -1


def orient_for_display(image: np.ndarray, display: SliceDisplay) -> np.ndarray:
    """A slice (H, W[, C]) turned as `display` says (a view, no copy)."""
    if display.transpose:
        image = np.swapaxes(image, 0, 1)
    if display.flip_rows:
        image = image[::-1]
    if display.flip_columns:
        image = image[:, ::-1]
    return image


def orientation_code(volume: Volume) -> str:
    """Three letters naming where each index axis (x, y, z) points, e.g. "LPS" or "RAS".

    Each index axis takes a world axis of its own (`index_axes_in_world`); LPS letters for positive
    world directions, RAI for negative ones (the DICOM/ITK convention of naming the direction an
    axis increases towards).
    """
    positive, negative = "LPS", "RAI"
    return "".join((positive if sign > 0 else negative)[world] for world, sign in index_axes_in_world(volume))
