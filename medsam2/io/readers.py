"""Reading images into `Volume`s: NIfTI, NRRD, MetaImage, DICOM, MedSAM npz and 2D pictures.

What each reader leaves in ``Volume.meta`` (used by the writers to mirror the input):

- ``"is_2d"``: the file held a 2D image (a picture, a 2D npz, a 2D NIfTI...), stored as one slice;
- ``"dicom_files"``: for DICOM input, the source file paths in slice (or frame) order;
- ``"npz"``: for npz input, every array but ``imgs`` by key (``gts``, ``recist``, ``boxes``, ``spacing``...);
- ``"nifti_header"``: for NIfTI input, its nibabel header, both transforms (qform and sform) with their codes.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageOps
from pydicom.errors import InvalidDicomError

from medsam2.errors import InputError
from medsam2.io import dicom
from medsam2.io.lazy_import import lazy_module
from medsam2.io.native_stderr import (
    GDCM_JPEG_PROBES,
    METAIO_COMPLAINTS,
    OPENJPEG_COMPLAINTS,
    itk_warnings_off,
    native_lines_dropped,
)
from medsam2.io.paths import IMAGE_SUFFIXES, PICTURE_SUFFIXES, VIDEO_SUFFIXES, image_suffix
from medsam2.io.volume import Modality, Volume, parse_modality
from medsam2.wording import counted

sitk = lazy_module("SimpleITK")

SUPPORTED_IMAGE_SUFFIXES = IMAGE_SUFFIXES  # plus DICOM series folders and DICOM files of any name
SITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# What the libraries raise on unreadable, truncated or malformed files.
_LIBRARY_READ_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    zlib.error,
    InvalidDicomError,
    nib.filebasedimages.ImageFileError,
)
_ITK_PREFIX = re.compile(r"^(ITK ERROR: (\w+\(0x[0-9a-fA-F]+\): )?|sitk::ERROR: )")


def file_suffix(path: Path) -> str:
    """The lower-case format suffix, ".nii.gz" as one; for an unknown format, the last suffix."""
    return image_suffix(path) or path.suffix.lower()


def library_reason(error: BaseException) -> str:
    """The informative line of a library's (often multi-line) error message, for a one-line error.

    SimpleITK raises RuntimeError with ITK's chain of messages, most specific last, after a
    source-location line, each prefixed with the class and address, sometimes followed by a stale
    errno "Reason:" line (a truncated MetaImage reports "No such file"). A message may run on over
    several lines (a matrix, row by row): they are joined to it. Python libraries put the message first.
    """
    raw = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in raw if line and not line.startswith(("Exception thrown in SimpleITK", "Reason: "))]
    if not useful:
        return type(error).__name__
    if not isinstance(error, RuntimeError):
        return useful[0]
    starts = [index for index, line in enumerate(useful) if _ITK_PREFIX.match(line)] or [len(useful) - 1]
    return _ITK_PREFIX.sub("", " ".join(useful[starts[-1]:]))


def load_image(
    path: str | Path,
    *,
    modality: str | None = None,
    npz_array_keys: tuple[str, ...] = ("imgs",),
    picture_values: bool = False,
) -> Volume:
    """Read an image file or a DICOM series folder into a `Volume` (see the module doc for formats).

    `modality` (CT, MR, PT, NM, US, XA, CR, DX, MG, ES, OT or unknown; any case; PET, MRI, SPECT too) overrides the DICOM Modality tag; files
    without one get "unknown", left to the preprocess layer to guess from the intensities.
    `npz_array_keys`: the npz arrays the volume is read from, the first one present.
    `picture_values`: a palette or 1-bit picture as the values it stores (a label map's: palette
    indices, 0/1), not the colours or grey levels they show.
    """
    path = Path(file_path(path, "load_image")).expanduser()  # "~/scan.nii.gz" from Python, as a shell would expand it
    try:
        override = parse_modality(modality) if modality is not None else None
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    read = _read_dicom_folder if path.is_dir() else _reader_for(path, npz_array_keys, picture_values)
    try:
        volume = read(path)
    except InputError:  # a ValueError too: let ours through unchanged
        raise
    except _LIBRARY_READ_ERRORS as error:
        raise InputError(f"{path}: cannot read ({library_reason(error)})") from error
    _check_values(volume.array, path)
    return replace(volume, modality=override) if override else volume


def declared_voxels(path: Path) -> int | None:
    """How many values (voxels times channels) an image file's header declares, read without decoding
    its pixels: what a small compressed file (a .nii.gz of zeros) expands to. None where no header
    tells (a DICOM folder; a picture, which PIL guards itself) or it cannot be read (`load_image`
    then says why)."""
    suffix = file_suffix(path)
    try:
        if suffix in SITK_SUFFIXES:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return sum(_npy_values(archive, member) for member in archive.namelist())
        if suffix == ".dcm" or dicom.is_dicom_file(path):
            return dicom.stated_values(dicom.read_header(path, ["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"]))
    except (*_LIBRARY_READ_ERRORS, TypeError):
        return None
    return None


def _npy_values(archive: zipfile.ZipFile, member: str) -> int:
    """Values of one array of an npz, from its .npy header."""
    with archive.open(member) as stream:
        first = np.lib.format.read_magic(stream) == (1, 0)
        shape, _, _ = (np.lib.format.read_array_header_1_0 if first else np.lib.format.read_array_header_2_0)(stream)
    return int(np.prod(shape, dtype=np.int64))


def file_path(path: object, caller: str) -> str | os.PathLike:
    """`path` where it names a file (a str or a path-like), else a one-line error: an image object
    (nibabel's, SimpleITK's, an array) was a TypeError from Path()."""
    if isinstance(path, (str, os.PathLike)):
        return path
    raise InputError(
        f"{caller} reads a file or DICOM folder given by its path, not a {type(path).__name__} "
        "(an array in memory: medsam2.io.Volume(array, spacing=(sx, sy, sz)))"
    )


def _reader_for(path: Path, npz_array_keys: tuple[str, ...], picture_values: bool) -> Callable[[Path], Volume]:
    suffix = file_suffix(path)
    if suffix in SITK_SUFFIXES:
        return _read_sitk_file
    if suffix == ".npz":
        return partial(_read_npz, array_keys=npz_array_keys)
    if suffix in PICTURE_SUFFIXES:
        return partial(_read_picture, stored_values=picture_values)
    if suffix == ".dcm" or dicom.is_dicom_file(path):
        return _read_dicom_file
    if suffix in VIDEO_SUFFIXES:
        raise video_not_scan(path, "a video")
    raise InputError(
        f"{path}: unsupported file type '{suffix or 'no extension'}' "
        f"(supported: {' '.join(SUPPORTED_IMAGE_SUFFIXES)} or a DICOM folder; videos: {' '.join(VIDEO_SUFFIXES)})"
    )


def _check_values(array: np.ndarray, path: Path) -> None:
    if array.size == 0:
        raise InputError(f"{path}: the image is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: NaN or infinite values in {counted(bad, 'voxel')}")


def _volume_from_sitk(
    image: sitk.Image, path: Path, modality: Modality = "unknown", meta: dict | None = None, has_spacing: bool = True
) -> Volume:
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    elif image.GetDimension() >= 4:
        raise InputError(
            f"{path}: {image.GetDimension()}D image holding {int(np.prod(size[3:]))} volumes of (Z, Y, X) {size[2::-1]}; "
            "medsam2 needs a single 3D volume (split the file first)"
        )
    is_2d = image.GetDimension() == 2
    if is_2d:
        image = sitk.JoinSeries(image)
    channels = image.GetNumberOfComponentsPerPixel()
    if channels not in (1, 3):
        raise InputError(f"{path}: {channels} values per voxel; expected grey (1) or colour (3)")
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
        modality=modality,
        source=path,
        has_spacing=has_spacing,
        meta={"is_2d": is_2d, **(meta or {})},
    )


LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])  # NIfTI's world axes (RAS) to ITK's and DICOM's (LPS)


def _read_sitk_file(path: Path) -> Volume:
    meta = {}
    nifti = None
    if file_suffix(path) in (".nii", ".nii.gz"):
        nifti = load_nifti(path)
        if isinstance(nifti, nib.Nifti2Image):  # ITK reads NIfTI-1 only ("Unable to determine ImageIO reader")
            raise InputError(
                f"{path}: a NIfTI-2 file, which medsam2 does not read; save it as NIfTI-1 "
                "(nibabel: nib.save(nib.Nifti1Image(image.dataobj, image.affine), path))"
            )
        _check_nifti_voxels(nifti, path)
        # SimpleITK keeps one transform of the two a NIfTI may hold; the mask writer needs both.
        meta["nifti_header"] = nifti.header
    metaimage = file_suffix(path) in (".mha", ".mhd")
    if nifti is not None and _is_grey_2d(nifti):
        image = sitk.GetImageFromArray(_scaled_voxels(nifti).T)
    else:
        # ITK's warnings on NIfTI transforms it reads past: the placement is nibabel's (below)
        with native_lines_dropped(on_failure=METAIO_COMPLAINTS) if metaimage else itk_warnings_off():
            image = sitk.ReadImage(str(path))
    volume = _volume_from_sitk(image, path, meta=meta)
    placement = _nibabel_placement(nifti) if nifti is not None else None
    return volume if placement is None else replace(volume, **placement)


def _is_grey_2d(nifti: nib.Nifti1Image) -> bool:
    """A NIfTI of one grey slice, whose voxels are read with nibabel: ITK keeps only the in-plane
    2x2 of its transform, so it refuses a coronal or sagittal slice (a singular 2x2) and loses the
    slice's position, and it places by pixdim where an sform's scales differ."""
    return len(nifti.shape) == 2 and nifti.get_data_dtype().fields is None


def _scaled_voxels(nifti: nib.Nifti1Image) -> np.ndarray:
    """The voxels with the header's scl_slope/scl_inter applied, float32 where scaled, as ITK reads them."""
    proxy = nifti.dataobj
    voxels = np.asanyarray(proxy)
    return voxels.astype(np.float32) if (float(proxy.slope), float(proxy.inter)) != (1.0, 0.0) else voxels


def load_nifti(path: Path) -> nib.Nifti1Image:
    """`nib.load` without its notes on header quirks it reads past (a negative pixdim...), which it
    logs process-wide: the logger's level is raised for the call, then set back."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return nib.load(path)
    finally:
        logger.setLevel(level)


def _nibabel_placement(nifti: nib.Nifti1Image) -> dict[str, tuple[float, ...]] | None:
    """The spacing, origin and direction nibabel (and FSL, and the mask writer, which copies the
    header) takes from a NIfTI: its sform when set, else its qform. SimpleITK may prefer the qform,
    drop an sform whose scales differ from pixdim, or keep a negative pixdim's flip on the wrong
    axis. An sform with shear (registration output) has no orthogonal grid: the qform places it, as
    in SimpleITK (the mask still carries both). None where SimpleITK's grid stays: a file with
    neither transform, or none orthogonal."""
    header = nifti.header
    if int(header["qform_code"]) <= 0 and int(header["sform_code"]) <= 0:
        return None
    for affine in (nifti.affine, nifti.get_qform() if int(header["qform_code"]) > 0 else None):
        if affine is None:
            return None
        axes = LPS_FROM_RAS @ affine[:3, :3]  # columns: the voxel axes i, j, k in LPS millimetres
        spacing = np.linalg.norm(axes, axis=0)
        direction = axes / np.where(spacing > 0, spacing, 1.0)
        if spacing.all() and np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            origin = LPS_FROM_RAS @ affine[:3, 3]
            return {"spacing": tuple(spacing.tolist()), "origin": tuple(origin.tolist()), "direction": tuple(direction.flatten().tolist())}
    return None


def _check_nifti_voxels(image: nib.Nifti1Image, path: Path) -> None:
    """Check with nibabel what SimpleITK (niftilib) hides: it reads a truncated NIfTI without complaint,
    making up the missing voxels, and silently turns NaN/inf voxels into 0."""
    if np.issubdtype(image.get_data_dtype(), np.floating):
        _check_values(np.asanyarray(image.dataobj), path)  # raises EOFError/OSError when truncated
        return
    header = image.header
    data_bytes = int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    data_end = int(header.get_data_offset()) + data_bytes
    with nib.openers.Opener(path) as stream:  # decompresses .nii.gz; EOFError if the gzip stream is cut short
        stream.seek(data_end - 1)
        if not stream.read(1):
            raise InputError(f"{path}: the file is truncated (voxel data ends early)")


def _read_dicom_file(path: Path) -> Volume:
    try:
        header = dicom.read_header(path)
    except Exception:  # noqa: BLE001 - a header pydicom cannot read: GDCM's reading below says what is wrong
        header = None
    if header is not None and dicom.stated_modality(header) == "SEG":
        # GDCM reads a SEG's frames as an image of 0/255: it was segmented as if it were a scan
        raise InputError(f"{path}: a DICOM-SEG (a mask drawn on a series), not an image: open the series it segments and load the SEG as its mask")
    if header is not None:
        dicom.check_pixel_data_complete(header, path)
    try:
        with native_lines_dropped(always=GDCM_JPEG_PROBES, on_failure=OPENJPEG_COMPLAINTS):
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:  # GDCM turns down a file cut short as of no format it knows
        if dicom.is_dicomdir(path):
            below = dicom.dicom_subfolder(path.parent)
            raise InputError(f"{path}: a DICOMDIR, the index of a disc's or drive's images; give a series folder{f', e.g. {below}' if below else ''}") from None
        if (kind := _imageless_dicom_kind(path)) is not None:
            raise InputError(f"{path}: a DICOM {kind}, which holds no image") from None
        if header is not None and (plane := _single_dose_plane(path)) is not None:
            return _dicom_volume(plane, path, header, [str(path)], gdcm_decoded=False)
        raise InputError(
            f"{path}: a DICOM file ITK's reader (GDCM) cannot read: damaged, cut short or encoded in a way it does not "
            f"know ({library_reason(error)})"
        ) from None
    if header is None:  # GDCM read what pydicom could not: pydicom's error says why the header cannot be used
        header = dicom.read_header(path)
    dicom.check_frame_positions(header, path)
    volume = _dicom_volume(image, path, header, [str(path)])
    return volume.with_array(dicom.frame_rescaled_values(volume.array, header, path))


def _dicom_volume(image: sitk.Image, path: Path, header: pydicom.Dataset, files: list[str], gdcm_decoded: bool = True) -> Volume:
    """The volume GDCM read from `files` (`header`: the first one's), its pixel values checked for
    encodings GDCM gets wrong; without spacing where the header gives none and GDCM made up 1 mm."""
    if gdcm_decoded:
        dicom.check_decoded_rightly(header, Path(files[0]))
    spaced = dicom.states_pixel_spacing(header) or not np.allclose(image.GetSpacing()[:2], 1.0)
    volume = _volume_from_sitk(image, path, dicom.modality_of(header), {"dicom_files": files}, has_spacing=spaced)
    return volume.with_array(dicom.dose_values(dicom.measured_values(volume.array, files, header), header))


def _single_dose_plane(path: Path) -> sitk.Image | None:
    """A one-frame RT Dose (a dose plane) read with pydicom, placed by its header; None for any other
    file or one pydicom cannot decode either. GDCM turns down a dose of one frame: it takes the
    slice spacing from the Grid Frame Offset Vector's first two offsets, which one frame lacks."""
    try:
        dataset = pydicom.dcmread(path, force=True)
        if str(dataset.get("Modality", "")).strip().upper() != "RTDOSE" or int(dataset.get("NumberOfFrames") or 1) != 1:
            return None
        pixels = dataset.pixel_array
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))[: int(dataset.Rows), : int(dataset.Columns)]
        if pixels.ndim != 2:  # several frames though none is stated
            pixels = pixels[0]
        orientation = np.array(dataset.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
        thickness = float(dataset.get("SliceThickness") or 0) or 1.0
    except Exception:  # noqa: BLE001 - not a readable dose plane: the caller's error stands
        return None
    image = sitk.GetImageFromArray(pixels[np.newaxis])
    image.SetSpacing((column_spacing, row_spacing, thickness))
    image.SetOrigin(tuple(float(v) for v in dataset.ImagePositionPatient))
    image.SetDirection(tuple(np.column_stack([orientation[:3], orientation[3:], np.cross(orientation[:3], orientation[3:])]).flatten()))
    return image


def _imageless_dicom_kind(path: Path) -> str | None:
    """What a DICOM file of a class without images is (an RT structure set, a structured report...),
    from its SOP class; None for an image class (one without pixels is cut short) or an unreadable file."""
    try:  # force: old files (some RT structure sets) lack the preamble
        header = pydicom.dcmread(path, defer_size="1 KB", force=True)
        kind = str(header.SOPClassUID.name).removesuffix(" Storage") if "SOPClassUID" in header else None
    except Exception:  # noqa: BLE001 - damaged: the caller says so
        return None
    if (kind and "Image" in kind) or any(tag in header for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None
    return kind or "file of no stated class and without pixel data"


def is_picture_file(path: Path) -> bool:
    """A picture (PNG, JPEG...) by its name; hidden files (a system's ._ or .DS_Store) are not."""
    return not path.name.startswith(".") and file_suffix(path) in PICTURE_SUFFIXES


def is_frame_folder(folder: Path) -> bool:
    """A folder holding pictures and no DICOM file: a video's frames (read by medsam2.io.video)."""
    entries = [entry for entry in folder.iterdir() if entry.is_file()]
    return any(map(is_picture_file, entries)) and not any(map(dicom.is_dicom_file, entries))


def video_not_scan(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}, not a scan; `medsam2 segment` reads videos (prompt a frame with --frame-box)")


def _read_dicom_folder(path: Path) -> Volume:
    if is_frame_folder(path):
        raise video_not_scan(path, "a folder of video frames")
    image, files = dicom.read_largest_series(path)
    return _dicom_volume(image, path, dicom.read_header(files[0]), files)


def dicom_headers(volume: Volume, purpose: str) -> list[pydicom.Dataset]:
    """The headers of the DICOM files `volume` was read from, in slice order (for a DICOM-SEG
    written on them or read against them: `purpose`); a one-line error if they cannot be re-read."""
    try:
        return [dicom.read_header(file) for file in volume.meta["dicom_files"]]
    except (OSError, InvalidDicomError) as error:
        raise InputError(f"{volume.source}: cannot re-read its DICOM files {purpose} ({library_reason(error)})") from error


def _read_npz(path: Path, array_keys: tuple[str, ...] = ("imgs",)) -> Volume:
    """A MedSAM-style npz as a volume of its first array among ``array_keys``; the other arrays stay
    in ``meta["npz"]``."""
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and talk of allow_pickle
        with path.open("rb") as file:
            damaged = file.read(4) == b"PK\x03\x04"  # a zip's start without its end: cut short
        raise InputError(f"{path}: {'a truncated or damaged' if damaged else 'not an'} npz archive (an .npz file is a zip of NumPy arrays)")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    key = next((k for k in array_keys if k in arrays), None)
    if key is None:
        wanted = " or ".join(f"'{k}'" for k in array_keys)
        raise InputError(f"{path}: no {wanted} array in this npz (keys: {', '.join(sorted(arrays)) or 'none'})")
    imgs = arrays.pop(key)
    # MedSAM layouts: 3D (D, H, W); 2D grey (H, W) or colour (H, W, 3).
    is_2d = imgs.ndim == 2 or (imgs.ndim == 3 and imgs.shape[-1] == 3)
    if not is_2d and imgs.ndim != 3:
        raise InputError(f"{path}: '{key}' has shape {imgs.shape}; expected (D, H, W), (H, W) or (H, W, 3)")
    geometry = {key: arrays[key] for key in ("spacing", "origin", "direction") if key in arrays}  # checked by Volume
    return Volume(
        array=imgs[None] if is_2d else imgs, source=path, meta={"is_2d": is_2d, "npz": arrays}, **geometry
    )


def _read_picture(path: Path, stored_values: bool = False) -> Volume:
    return Volume(array=read_picture(path, stored_values)[None], source=path, meta={"is_2d": True})


def picture_size(path: Path) -> tuple[int, int]:
    """(H, W) of the picture `read_picture` gives, from the file's header (no pixels decoded)."""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            turned = picture.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)  # a quarter turn
    except _LIBRARY_READ_ERRORS as error:
        raise InputError(f"{path}: cannot read ({library_reason(error)})") from error
    return (width, height) if turned else (height, width)


def read_picture(path: Path, stored_values: bool = False) -> np.ndarray:
    """One 2D picture as (H, W) grey or (H, W, 3) RGB, upright as its EXIF orientation says (as
    viewers show it); palette, alpha and CMYK pictures become RGB. With `stored_values`, a palette
    picture is its (H, W) palette indices and a 1-bit one 0/1, as label maps are stored (PASCAL VOC,
    CVAT). A damaged file is an error naming it (one frame of a folder, say)."""
    try:
        with Image.open(path) as picture:
            if getattr(picture, "n_frames", 1) > 1:
                raise InputError(f"{path}: {picture.n_frames} pages; only single 2D images are supported")
            picture = ImageOps.exif_transpose(picture)
            if stored_values and picture.mode in ("P", "1"):
                return np.asarray(picture).astype(np.uint8)
            if picture.mode in ("1", "LA"):
                picture = picture.convert("L")
            elif picture.mode not in ("L", "I", "I;16", "F", "RGB"):  # palette, alpha, CMYK...
                picture = picture.convert("RGB")
            return np.asarray(picture)
    except InputError:
        raise
    except _LIBRARY_READ_ERRORS as error:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"{path}: cannot read ({library_reason(error)})") from error
