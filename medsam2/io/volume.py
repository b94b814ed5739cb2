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

from medsam2.errors import InputError

Modality = Literal["CT", "MR", "PT", "US", "XA", "OT", "unknown"]
SliceAxis = Literal["axial", "coronal", "sagittal"]


@dataclass(frozen=True)
class Volume:
    """An image (3D, or 2D as one slice) and the geometry that places it in the patient."""

    array: np.ndarray  # (Z, Y, X) or (Z, Y, X, C)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (sx, sy, sz) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm of voxel [0, 0, 0]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # 3x3 row-major
    modality: Modality = "unknown"
    source: Path | None = None
    # Format-specific extras the writers need to mirror the input (npz keys, DICOM datasets...).
    meta: dict = field(default_factory=dict, compare=False, repr=False)

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
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return replace(self, array=array)


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
            raise InputError(f"{what}: {name} differs: {np.round(ours, 4).tolist()} vs {np.round(theirs, 4).tolist()}")


def slicing_axis_index(volume: Volume, axis: SliceAxis) -> int:
    """Which array axis (0, 1 or 2) to step through to get `axis` slices.

    Chosen from the direction cosines, so an image stored sagittally still gives axial slices
    when asked for axial: axial slices are stacked along world z (LPS S), coronal along world y (P),
    sagittal along world x (L).
    """
    world_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[axis]
    # direction[:, d] is the world direction of index axis d (x, y, z); array axis = 2 - d.
    index_axis_xyz = int(np.argmax(np.abs(volume.direction_matrix[world_axis, :])))
    return 2 - index_axis_xyz


def to_slices(array: np.ndarray, axis_index: int) -> np.ndarray:
    """View of a (Z, Y, X[, C]) array with the slicing axis first (a view, no copy)."""
    return np.moveaxis(array, axis_index, 0)


def from_slices(array: np.ndarray, axis_index: int) -> np.ndarray:
    """Inverse of `to_slices`."""
    return np.moveaxis(array, 0, axis_index)


def orientation_code(volume: Volume) -> str:
    """Three letters naming where each index axis (x, y, z) points, e.g. "LPS" or "RAS".

    Each index axis takes the world axis it is most aligned with; LPS letters for positive world
    directions, RAI for negative ones (the DICOM/ITK convention of naming the direction an axis
    increases towards).
    """
    positive, negative = "LPS", "RAI"
    letters = []
    for d in range(3):
        column = volume.direction_matrix[:, d]
        world = int(np.argmax(np.abs(column)))
        letters.append(positive[world] if column[world] > 0 else negative[world])
    return "".join(letters)
