"""Writing label masks that overlay their input image exactly, atomically."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medsam2.errors import InputError
from medsam2.io import dicom
from medsam2.io.atomic import outputs_together, write_failure
from medsam2.io.lazy_import import lazy_module
from medsam2.io.readers import SITK_SUFFIXES, dicom_headers, file_suffix, library_reason
from medsam2.io.volume import Volume

sitk = lazy_module("SimpleITK")

SUPPORTED_MASK_SUFFIXES = SITK_SUFFIXES + (".npz", ".png", ".dcm")


def save_mask(
    mask: np.ndarray | Volume | object, like: Volume, path: str | Path, names: Mapping[int, str | None] | None = None
) -> Path:
    """Write `mask` (integer labels, shape ``like.shape``) with the geometry of `like`; return the path.

    `mask`: an array (numpy, a list, a tensor), a label `Volume` (its array is written) or the
    `Result` of `segment_volume` (its labels, and its object names where `names` is not given).

    The format follows the suffix: NIfTI/NRRD/MetaImage (spacing, origin, direction of `like`; a NIfTI
    mask of a NIfTI image gets that image's qform and sform, with their codes, unchanged), .npz
    (key ``segs`` in the layout of a MedSAM npz, with ``spacing``, ``origin``, ``direction``), .png
    (2D images only) or .dcm (a DICOM-SEG referencing the DICOM image `like` was read from; its
    segments are labelled with the objects' `names`, label -> name). Labels are stored as uint8, or
    uint16 when a label exceeds 255. Nothing is left at `path` on failure.
    """
    path = Path(path).expanduser()  # "~/mask.nii.gz" from Python: was a folder named ~
    if not isinstance(like, Volume):
        raise InputError(f"{path}: save_mask needs like=, the Volume the mask belongs to (its geometry), not {type(like).__name__}")
    check_mask_name(path, like)
    if isinstance(getattr(mask, "labels", None), Volume):  # a segment_volume Result: was "mask shape ()"
        names = names if names is not None else getattr(mask, "names", None)
        mask = mask.labels  # type: ignore[union-attr]
    if isinstance(mask, Volume):  # result.labels
        mask = mask.array
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise InputError(f"{path}: mask shape {mask.shape} does not match the image's (Z, Y, X) {like.shape}")
    labels = _label_map(mask, path)
    if file_suffix(path) == ".dcm":
        write = partial(_write_dicom_seg, names=names or {})
    else:
        write = _WRITERS.get(file_suffix(path), _write_sitk)
    with _atomic_output(path) as staging_path:
        write(labels, like, staging_path)
    return path


# The header key naming a detached header's data file (written by SimpleITK beside the header).
_DATA_FILE_KEYS = {".mhd": ("=", ("elementdatafile",)), ".nhdr": (":", ("data file", "datafile"))}


def mask_files(path: Path) -> list[Path]:
    """The files a written mask consists of: `path`, and for a .mhd / .nhdr header the data file
    beside it that the header names (a mask removed or replaced must not leave that behind)."""
    path = Path(path)
    files = [path]
    suffix = file_suffix(path)
    if suffix not in _DATA_FILE_KEYS or not path.is_file():
        return files
    separator, keys = _DATA_FILE_KEYS[suffix]
    for line in path.read_text(encoding="latin-1").splitlines():
        key, found, value = line.partition(separator)
        name = value.strip()
        # Only a plain name beside the header: never follow a header to a file elsewhere.
        if found and key.strip().lower() in keys and name and Path(name).name == name and name not in (".", "..", "LOCAL"):
            files.append(path.parent / name)
            break
    return files


def check_mask_output(path: Path, like: Volume | None = None) -> None:
    """Raise InputError where `save_mask` would refuse `path` (for a mask of `like`, when given).
    Front ends call it before the segmentation, so that a wrong output name fails at once: a
    DICOM-SEG is tried on `like`'s DICOM files with a voxel marked on the first and last slices
    (not written)."""
    check_mask_name(path, like)
    if like is not None and file_suffix(path) == ".dcm":
        probe = np.zeros(like.shape, np.uint8)
        probe[[0, -1], 0, 0] = 1
        _dicom_seg(probe, like)


def check_mask_name(path: Path, like: Volume | None) -> None:
    """`check_mask_output`'s checks of the name and of the image's kind (a PNG holds one slice, a
    DICOM-SEG needs a DICOM image), which cost nothing."""
    suffix = file_suffix(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; name the mask file, e.g. {path / 'mask.nii.gz'}")
    if not suffix:
        raise InputError(
            f"{path}: no extension to tell the mask's format; name the file, e.g. {path}.nii.gz or "
            f"{path / 'mask.nii.gz'} (supported: {' '.join(SUPPORTED_MASK_SUFFIXES)})"
        )
    if suffix not in SUPPORTED_MASK_SUFFIXES:
        raise InputError(
            f"{path}: cannot write masks as '{suffix}' "
            f"(supported: {' '.join(SUPPORTED_MASK_SUFFIXES)})"
        )
    if like is None:
        return
    if suffix == ".png" and like.shape[0] != 1:
        raise InputError(f"{path}: PNG holds one 2D slice but the image has {like.shape[0]}; use .nii.gz")
    if suffix == ".dcm" and "dicom_files" not in like.meta:
        raise InputError(f"{path}: DICOM-SEG output needs a DICOM input image, not {like.source or 'an array'}")


def _label_map(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not (np.isfinite(mask).all() and np.array_equal(mask, np.round(mask))):
            raise InputError(f"{path}: mask values must be whole-number labels, got non-integer {mask.dtype} values")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{path}: mask must hold integer labels, got {mask.dtype}")
    low, high = (mask.min(), mask.max()) if mask.size else (0, 0)
    if float(low) < 0 or float(high) > np.iinfo(np.uint16).max:  # as floats: 65535 overflows float16
        raise InputError(f"{path}: mask labels must be within 0..65535, got {low}..{high}")
    return mask.astype(np.uint8 if high < 256 else np.uint16)


@contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """Yield where to write `path`'s file(s) (`medsam2.io.atomic.outputs_together`: .mhd/.nhdr headers
    name their data file, which must keep its final name); library and file-system failures become
    `InputError`."""
    try:
        with outputs_together([path]) as (target,):
            yield target
    except (OSError, RuntimeError) as error:  # RuntimeError: SimpleITK's writers
        raise InputError(f"{path}: cannot write ({library_reason(error)})") from error


def _write_sitk(labels: np.ndarray, like: Volume, target: Path) -> None:
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(like.spacing)
    image.SetOrigin(like.origin)
    image.SetDirection(like.direction)
    if like.meta.get("is_2d") and _placed_in_plane(like):  # the mask of a 2D image is 2D, as the image was
        image = image[:, :, 0]
    sitk.WriteImage(image, str(target), useCompression=True)
    _check_written(image, target)


def _check_written(image: "sitk.Image", target: Path) -> None:
    """Read back what SimpleITK wrote: ITK checks its writes of voxel data but not of a header, so on a
    disk that fills up as the header (the last file of a .mhd/.nhdr pair) is written it returns, leaving
    a header of 0 bytes that would be reported as written and moved over a good one."""
    try:
        written = sitk.ReadImage(str(target))
        same = written.GetSize() == image.GetSize() and np.array_equal(
            sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image)
        )
    except RuntimeError:
        same = False
    if not same:  # what ITK did not say: mostly, that the disk filled up
        raise write_failure(target, "the file written does not read back as the mask")


def _placed_in_plane(volume: Volume) -> bool:
    """Whether a 2D file can hold the slice's placement: in the patient's x-y plane at z = 0. A
    one-slice NIfTI may be a coronal or sagittal slice, or lie at a height: its mask in a 2D NRRD
    or MetaImage would lose that, so it is written as one slice of a 3D image instead."""
    direction = volume.direction_matrix
    return bool(np.allclose(direction[2], (0, 0, 1)) and np.allclose(direction[:, 2], (0, 0, 1)) and volume.origin[2] == 0)


def _write_nifti(labels: np.ndarray, like: Volume, target: Path) -> None:
    """A NIfTI mask of a NIfTI image keeps the image's header transforms as they are. SimpleITK keeps
    only one of a NIfTI's qform and sform and writes it back as both, so the mask of a registered image
    (FSL and ANTs set an sform that differs from the qform) would land elsewhere in sform-based tools."""
    template = like.meta.get("nifti_header")
    if template is None:
        _write_sitk(labels, like, target)
        return
    data = labels.T  # (Z, Y, X) -> NIfTI's (x, y, z)
    if like.meta.get("is_2d"):
        data = data[:, :, 0]
    nib.save(nib.Nifti1Image(data, None, _mask_header(template, labels.dtype)), target)


def _mask_header(template: nib.Nifti1Header, dtype: np.dtype) -> nib.Nifti1Header:
    """`template` (qform, sform, their codes, units) for label voxels: the image's value scaling (a CT's
    rescale), intent, display range and extensions describe its intensities, not the labels."""
    header = template.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("none")
    header["cal_min"] = header["cal_max"] = 0
    header.extensions.clear()
    return header


def _write_npz(labels: np.ndarray, like: Volume, target: Path) -> None:
    """`segs`, and the geometry the image's file stated (an npz's own keys; none for a picture):
    the mask claims no spacing or placement its image did not have."""
    geometry = {"spacing": like.spacing, "origin": like.origin, "direction": like.direction}
    if "npz" in like.meta:
        geometry = {key: value for key, value in geometry.items() if key in like.meta["npz"]}
    elif not like.has_spacing:
        geometry = {}
    np.savez_compressed(
        target, segs=labels[0] if like.meta.get("is_2d") else labels, **{key: np.asarray(value) for key, value in geometry.items()}
    )


def _write_png(labels: np.ndarray, like: Volume, target: Path) -> None:
    Image.fromarray(labels[0]).save(target)


def _dicom_seg(labels: np.ndarray, like: Volume, names: Mapping[int, str | None] | None = None) -> Dataset:
    sources = dicom_headers(like, "for the DICOM-SEG")
    try:
        return dicom.build_segmentation(labels, sources, names, slice_thickness=like.spacing[2])
    except (ValueError, AttributeError, KeyError) as error:
        # Attributes a SEG must copy from its sources (patient, study, frame of reference, an
        # enhanced multi-frame image's functional groups) missing or malformed.
        raise InputError(f"{like.source}: cannot make a DICOM-SEG from this image ({_seg_failure(error)})") from error


def _seg_failure(error: Exception) -> str:
    """Why highdicom could not build the SEG; a header attribute it read and found missing by name and tag."""
    tag = tag_for_keyword(error.name) if isinstance(error, AttributeError) and error.name else None
    if tag is None:
        return library_reason(error)
    return f"its files lack the DICOM attribute {error.name} {Tag(tag)}"


def _write_dicom_seg(labels: np.ndarray, like: Volume, target: Path, names: Mapping[int, str | None]) -> None:
    _dicom_seg(labels, like, names).save_as(target)


_WRITERS: dict[str, Callable[[np.ndarray, Volume, Path], None]] = {
    ".nii": _write_nifti,
    ".nii.gz": _write_nifti,
    ".npz": _write_npz,
    ".png": _write_png,
}
