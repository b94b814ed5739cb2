"""Label maps in: mask files, and the masks stored beside the image in MedSAM npz files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medsam2.errors import InputError
from medsam2.io.dicom import is_segmentation, read_segmentation
from medsam2.io.readers import PICTURE_SUFFIXES, dicom_headers, file_path, file_suffix, load_image
from medsam2.io.volume import Volume, check_same_geometry, in_storage_order_of

# npz keys holding a label map, in order of preference: our output, then ground truth.
NPZ_MASK_KEYS = ("segs", "gts")
# A label is constant across its object, so few pairs of neighbouring labelled voxels differ (4.5%
# in a 117-organ partition of a cube, every organ touching others); an image's texture makes most
# differ (81% and 94% in two CTs saved as uint8, 91% in the MNI152 T1 template). Above this share, and with
# enough pairs to judge, a file read as a label map is taken for an image (the wrong file picked).
IMAGE_LIKE_NEIGHBOUR_CHANGE = 0.5
MIN_NEIGHBOUR_PAIRS = 1000
# A smooth image with few grey levels (a CT quantised to 32 levels: 43%) changes less; with more than
# 16 values, a share of half this is already an image's (the partition above: 4.5%, touching 5-voxel
# cells: 20%).
MANY_VALUES = 16
MANY_VALUES_IMAGE_LIKE_CHANGE = 0.25


def stored_array(volume: Volume, key: str) -> np.ndarray | None:
    """An array stored beside the image of an npz volume (``gts``, ``recist``...), in the volume's
    (Z, Y, X) layout; None if the file had no such key."""
    array = volume.meta.get("npz", {}).get(key)
    if array is None:
        return None
    array = np.asarray(array)
    return array[None] if volume.meta.get("is_2d") and array.ndim == 2 else array


def states_geometry(volume: Volume) -> bool:
    """Whether the file gave its geometry: an npz may leave out spacing, origin and direction, and
    a picture has none; then only the shape tells whether a mask fits an image."""
    if "npz" in volume.meta:
        return any(key in volume.meta["npz"] for key in ("spacing", "origin", "direction"))
    return volume.source is None or file_suffix(Path(volume.source)) not in PICTURE_SUFFIXES


def check_mask_fits(image: Volume, mask: Volume) -> None:
    """`check_same_geometry` for a mask given with an image, as far as the mask file states one."""
    what = f"{mask.source} vs {image.source}"
    if states_geometry(mask):
        check_same_geometry(mask, image, what)
    elif mask.shape != image.shape:
        raise InputError(f"{what}: shape (Z, Y, X) differs: {mask.shape} vs {image.shape}")


def load_mask(path: Path | str, like: Volume | None = None) -> Volume:
    """A label map from any image format; from an npz, its ``segs`` (else ``gts``) array; from a
    DICOM-SEG, the labels it draws on `like`, the DICOM series (or file) it segments. Given `like`
    (the image the mask belongs to), the mask comes on its voxel grid (`on_grid_of`), or a one-line
    error says why it cannot."""
    path = file_path(path, "load_mask")
    if is_segmentation(Path(path)):
        return _segmentation_on(Path(path), like)
    volume = load_image(path, npz_array_keys=NPZ_MASK_KEYS, picture_values=True)
    if volume.is_color:
        raise InputError(f"{path}: a colour image is not a label map")
    labels = as_label_map(volume.array, path)
    mask = volume if labels is volume.array else volume.with_array(labels)
    return mask if like is None else on_grid_of(mask, like)


def on_grid_of(mask: Volume, image: Volume) -> Volume:
    """`mask` voxel for voxel on `image`'s grid: as it is, or, stored in another axis order (a tool
    saving RAS for an LPS scan), rearranged into the image's; a one-line error unless it then
    overlays the image as far as its file says (`check_mask_fits`). What an npz mask leaves out of
    its geometry (origin, direction: a MedSAM npz gives only spacing) is the image's: its array is
    in the image's storage order, not rearranged from a default identity direction (which
    transposed a square mask of a scan stored with x and y swapped, and refused a flipped one)."""
    mask = unstated_geometry_from(mask, image)
    if states_geometry(mask):
        mask = in_storage_order_of(mask, image)
    check_mask_fits(image, mask)
    return mask


def unstated_geometry_from(mask: Volume, other: Volume) -> Volume:
    """`mask` with the geometry its npz leaves out (of spacing, origin, direction, where it gives
    some) taken from `other`, the image or mask it is compared with, rather than the defaults."""
    if "npz" not in mask.meta or not states_geometry(mask):
        return mask
    unstated: dict = {key: getattr(other, key) for key in ("spacing", "origin", "direction") if key not in mask.meta["npz"]}
    if "spacing" in unstated:
        unstated["has_spacing"] = other.has_spacing
    return replace(mask, **unstated) if unstated else mask


def _segmentation_on(path: Path, like: Volume | None) -> Volume:
    # A SEG holds only the non-empty frames of a series it references: its slices are known only
    # through that series.
    if like is None:
        raise InputError(f"{path}: a DICOM-SEG is read against the DICOM series it segments, and none is given with it here")
    if "dicom_files" not in like.meta:
        raise InputError(
            f"{path}: a DICOM-SEG is read against the DICOM series it segments, not {like.source or 'an image'} "
            "(not read from DICOM files)"
        )
    labels, names = read_segmentation(path, dicom_headers(like, "to read the DICOM-SEG on"))
    if labels.shape != like.shape:
        raise InputError(f"{path}: shape (Z, Y, X) {labels.shape} differs from the image's {like.shape}")
    return replace(like.with_array(labels), source=path, meta={"label_names": names})


def label_names(mask: Volume) -> dict[int, str]:
    """The names a mask file gives its labels (a DICOM-SEG's segment labels); {} where it gives none."""
    return dict(mask.meta.get("label_names", {}))


def check_label_values(array: np.ndarray, source: Path | str) -> None:
    """A one-line error unless `array` holds whole numbers >= 0 (labels, if it is a label map at all)."""
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise InputError(f"{source}: not a label map (non-integer values)")
    if array.size and array.min() < 0:
        raise InputError(f"{source}: not a label map (negative values)")


def as_label_map(array: np.ndarray, source: Path | str) -> np.ndarray:
    """`array` if it holds labels (whole numbers >= 0 not laid out as an image's intensities; floats
    become int32), else a one-line error."""
    check_label_values(array, source)
    changing, pairs = neighbour_change(array)
    if pairs >= MIN_NEIGHBOUR_PAIRS and (
        changing > IMAGE_LIKE_NEIGHBOUR_CHANGE * pairs
        or (changing > MANY_VALUES_IMAGE_LIKE_CHANGE * pairs and len(np.unique(array)) > MANY_VALUES + 1)  # + 1: the 0
    ):
        raise InputError(
            f"{source}: an image, not a label map ({changing / pairs:.0%} of neighbouring labelled voxels differ; "
            "a label map holds one whole number per object)"
        )
    return array if array.dtype == bool or np.issubdtype(array.dtype, np.integer) else array.astype(np.int32)


def neighbour_change(array: np.ndarray) -> tuple[int, int]:
    """(pairs of row neighbours that differ, pairs in all) among those where both voxels are labelled."""
    left, right = array[..., :-1], array[..., 1:]
    both = (left != 0) & (right != 0)
    return int(np.count_nonzero(both & (left != right))), int(np.count_nonzero(both))
