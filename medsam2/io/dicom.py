"""DICOM specifics: finding and reading a series, the modality tag, writing DICOM-SEG."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import pydicom
import pydicom.misc
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medsam2.errors import InputError, first_line
from medsam2.io.lazy_import import lazy_module
from medsam2.io.native_stderr import GDCM_JPEG_PROBES, OPENJPEG_COMPLAINTS, itk_warnings_off, native_lines_dropped
from medsam2.io.volume import Modality
from medsam2.wording import counted

# Loaded when first used: only reading or writing DICOM needs them.
hd = lazy_module("highdicom")
sitk = lazy_module("SimpleITK")

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: a DICOM file with no series
SEGMENT_LABEL_LENGTH = 64  # characters: DICOM's LO value representation
TRACKING_PREFIX = "object "  # a segment's Tracking ID: "object 3" is the label map's object 3
# How far (mm) slice positions may stray from the line along the slice normal (position text rounding).
MAX_SIDEWAYS_MM = 0.1
# Tags whose values tell images at the same positions in one series apart: (what one is, several).
STACKED_IN_ONE_SERIES = {
    "0018|0086": ("echo", "echoes"),
    "0020|0100": ("temporal position", "temporal positions"),
    "0020|0012": ("acquisition", "acquisitions"),
}


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM file, whatever its name: one with the preamble ("DICM" at byte 128), or one
    written without it and without a file meta group, as older scanners and PACS exports (ACR-NEMA
    style) write them, which then begins with a group 0008 data element, little endian."""
    if not path.is_file():
        return False
    if pydicom.misc.is_dicom(path):
        return True
    with open(path, "rb") as file:
        start = file.read(8)
    if len(start) < 8 or start[:2] != b"\x08\x00":
        return False
    explicit_vr = start[4:6].decode("latin-1")
    # Implicit VR: a 4-byte value length, which for the first elements (lengths, codes, dates) is small.
    return explicit_vr in _VALUE_REPRESENTATIONS or int.from_bytes(start[4:], "little") < 2**16


_VALUE_REPRESENTATIONS = frozenset(vr.value for vr in pydicom.valuerep.VR)


def transfer_syntax(dataset: Dataset) -> pydicom.uid.UID:
    """How `dataset`'s file is encoded: as its file meta says, or, in a file written without one
    (`is_dicom_file`), as its elements were found to be when read."""
    if "TransferSyntaxUID" in dataset.file_meta:
        return dataset.file_meta.TransferSyntaxUID
    implicit, little = dataset.original_encoding
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def read_header(path: Path | str, tags: Sequence[str] | None = None) -> Dataset:
    """The header of a DICOM file (`is_dicom_file`: with or without its preamble), pixels unread;
    only `tags` where given."""
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags, force=True)


def is_dicomdir(path: Path) -> bool:
    """A DICOMDIR: the index a CD, DVD or USB export keeps of its images, which lie in sub-folders
    (the standard names the file DICOMDIR, which spares reading every other file)."""
    if path.name.upper() != "DICOMDIR":
        return False
    try:
        meta = read_header(path, ["DirectoryRecordSequence"]).file_meta
    except Exception:  # noqa: BLE001 - not a readable DICOM file: not a DICOMDIR either
        return False
    return meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS


def dicom_subfolder(folder: Path) -> Path | None:
    """The first folder below `folder` (depth first, by name) that holds DICOM files, if any."""
    for below in sorted(p for p in folder.rglob("*") if p.is_dir() and not p.name.startswith(".")):
        if any(is_dicom_file(entry) and not is_dicomdir(entry) for entry in below.iterdir()):
            return below
    return None


def separate_images(folder: Path) -> list[Path]:
    """The DICOM files in `folder` when there are several and each is a series of its own (a
    radiograph, ultrasound still or screenshot per file: images that share no geometry), sorted by
    name; otherwise none (a series to read as one volume, or no DICOM at all)."""
    files = sorted(e for e in folder.iterdir() if not e.name.startswith(".") and is_dicom_file(e) and not is_dicomdir(e))
    if len(files) < 2:
        return []
    series = set()
    for file in files:
        try:
            uid = read_header(file, ["SeriesInstanceUID"]).get("SeriesInstanceUID")
        except Exception:  # noqa: BLE001 - a damaged file: reading the folder as a series says which
            return []
        if uid is None or uid in series:
            return []
        series.add(uid)
    return files


def read_largest_series(folder: Path) -> tuple[sitk.Image, list[str]]:
    """The series with the most files in `folder`, and its files in slice order.

    GDCM orders a series' files by their position along the slice normal, not by file name or
    instance number, so the returned list matches the slices of the image.
    """
    # Checked first because GDCM only prints a warning when it finds nothing.
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if not entries:
        raise InputError(f"{folder}: the folder is empty (a scan's folder holds its DICOM files; a video's, its frames as pictures)")
    images = [entry for entry in entries if is_dicom_file(entry) and not is_dicomdir(entry)]
    if not images:
        below = dicom_subfolder(folder)
        if below is not None:  # a DICOMDIR export, or a patient/study/series tree
            raise InputError(f"{folder}: its DICOM images are in sub-folders; give a series folder, e.g. {below}")
        raise InputError(f"{folder}: no DICOM files in this folder (a video's frames would be PNG/JPEG/BMP/TIFF pictures)")
    # ITK's own warnings (no series found, uneven sampling) would print, in its format, beside the
    # one-line errors below that say the same.
    with itk_warnings_off(), native_lines_dropped(always=GDCM_JPEG_PROBES, on_failure=OPENJPEG_COMPLAINTS):
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if not series_ids:
            raise InputError(f"{folder}: no DICOM image series in this folder")
        all_series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id) for series_id in series_ids]
        files = max(all_series, key=len)
        tied = [series for series in all_series if len(series) == len(files)]
        if len(tied) > 1:  # two reconstructions of one scan, say: which one is not for medsam2 to guess
            if len(files) == 1:  # not a scan: separate images, each a series of its own
                raise InputError(f"{folder}: {len(tied)} separate DICOM images, each a series of its own; give one file, e.g. {tied[0][0]}")
            named = "; ".join(_series_in_words(series[0]) for series in tied)
            raise InputError(
                f"{folder}: {len(tied)} series of {counted(len(files), 'image')} each ({named}); "
                "put the one to segment in a folder of its own"
            )
        _check_files_complete(files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            image = reader.Execute()
        except RuntimeError:  # ITK says only "Size: [512, 1024, 1]" of an image of another size
            if (stray := _stray_image(files)) is not None:
                raise InputError(stray) from None
            raise
        if _rescale_varies(reader, len(files)) and image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            # ITK gives the series the pixel type its first file's rescale needs: a first slice of slope
            # 1 (a PET's empty end slice) made every other slice's fractional values integers.
            reader.SetOutputPixelType(sitk.sitkFloat64)
            image = reader.Execute()
    _check_no_file_left_out(entries, {Path(f) for series in all_series for f in series}, reader, folder)
    _check_even_slice_spacing(reader, image, folder)
    return image, list(files)


# What `check_pixel_data_complete` needs of a header: the pixels it states and their size.
PIXEL_SIZE_TAGS = ["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"]


def _check_files_complete(files: Sequence[str]) -> None:
    """Refuse a series with a file holding fewer pixels than it states before reading it: GDCM reads
    that file's missing pixels as zeros, a slice of wrong values in the scan, as it does a single file's."""
    for file in files:
        check_pixel_data_complete(read_header(file, PIXEL_SIZE_TAGS), Path(file))


def _rescale_varies(reader: sitk.ImageSeriesReader, count: int) -> bool:
    """Whether the series' files have different Rescale Slope or Intercept (a PET's, scaled slice by slice)."""
    def value(k: int, tag: str) -> float | None:  # as a number: "1" and "1.0" are one slope
        try:
            return float(reader.GetMetaData(k, tag)) if reader.HasMetaDataKey(k, tag) else None
        except ValueError:
            return None

    return any(len({value(k, tag) for k in range(count)}) > 1 for tag in ("0028|1053", "0028|1052"))


def _check_no_file_left_out(entries: list[Path], in_series: set[Path], reader: sitk.ImageSeriesReader, folder: Path) -> None:
    """Refuse a series that GDCM read without one of its files: it silently leaves out a file it
    cannot read, and one lost at either end of the series leaves no gap to notice. A DICOM file in
    no series is damaged when its header cannot be read or ends before its series (a DICOMDIR has
    none), and is one of the series read when it names it."""
    series_uid_tag = "0020|000e"
    series_uid = reader.GetMetaData(0, series_uid_tag).strip() if reader.HasMetaDataKey(0, series_uid_tag) else None
    for entry in sorted(set(entries) - in_series):
        if not is_dicom_file(entry):
            continue
        try:
            header = read_header(entry)
        except Exception as error:  # pydicom raises many kinds for a damaged file
            raise InputError(f"{entry}: a damaged DICOM file in {folder.name}/ ({first_line(error)}); restore or remove it") from None
        uid = str(header.get("SeriesInstanceUID", "")).strip()
        if not uid and header.file_meta.get("MediaStorageSOPClassUID") != DICOMDIR_SOP_CLASS:
            raise InputError(f"{entry}: a damaged DICOM file in {folder.name}/ (its header ends early); restore or remove it")
        if uid and uid == series_uid:
            raise InputError(f"{entry}: a file of the series that cannot be read (damaged or cut short); restore or remove it")


def _stray_image(files: Sequence[str]) -> str | None:
    """Why one of a series' `files` does not belong with the others (a localizer or screenshot filed
    in the series: its size or plane differs from most files'); None when all agree."""
    headers = [read_header(file, ["Rows", "Columns", "ImageOrientationPatient"]) for file in files]
    sizes = [f"{header.get('Columns')}x{header.get('Rows')}" for header in headers]
    planes = [tuple(round(float(v), 3) for v in header.get("ImageOrientationPatient") or ()) for header in headers]
    for values, what in ((sizes, "size"), (planes, "orientation")):
        common = Counter(values).most_common(1)[0][0]
        odd = [file for file, value in zip(files, values) if value != common]
        if odd:
            others = len(files) - len(odd)
            value = values[files.index(odd[0])]
            more = f" (and {counted(len(odd) - 1, 'other file')} alike)" if len(odd) > 1 else ""
            return (
                f"{odd[0]}: an image of {what} {value}{more} in a series of {counted(others, 'image')} of {what} "
                f"{common} (a localizer or another image filed with the series); move it out of the folder"
            )
    return None


def _check_even_slice_spacing(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """Refuse series with missing slices: GDCM silently leaves out files it cannot read, and ITK then
    spaces the remaining slices evenly, which misplaces every slice after the gap."""
    position_tag = "0020|0032"
    count = image.GetSize()[2]
    if count < 3 or not all(reader.HasMetaDataKey(k, position_tag) for k in range(count)):
        return
    orientation_tag = "0020|0037"
    orientations = {reader.GetMetaData(k, orientation_tag).strip() for k in range(count) if reader.HasMetaDataKey(k, orientation_tag)}
    # A localizer filed in the series would pass for a gap or a gantry tilt.
    if len(orientations) > 1 and (stray := _stray_image(list(reader.GetFileNames()))) is not None:
        raise InputError(stray)
    positions = np.array([[float(v) for v in reader.GetMetaData(k, position_tag).split("\\")] for k in range(count)])
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    problem = _stacking_problem(positions, normal, folder, "series")
    if problem is None:
        return
    for tag, (one, several) in STACKED_IN_ONE_SERIES.items():  # several echoes or phases at each position
        values = sorted({reader.GetMetaData(k, tag).strip() for k in range(count) if reader.HasMetaDataKey(k, tag)})
        if len(values) > 1:
            raise InputError(
                f"{folder}: the series holds {len(values)} {several} ({', '.join(values)}) over the same positions; "
                f"put one {one}'s files in a folder of their own"
            )
    raise InputError(
        f"{folder}: slice {problem} across the {count} readable files of the series; slices are missing, damaged "
        "or repeated (evenly spaced slices are needed)"
    )


def check_frame_positions(header: Dataset, path: Path) -> None:
    """Refuse an enhanced multi-frame image whose frames do not follow each other evenly in order of
    position (a frame missing, frames shuffled): GDCM then reads it at 1 mm with no orientation and the
    frames in file order, without a word, where a series' files would be sorted and checked."""
    frames = header.get("PerFrameFunctionalGroupsSequence") or []
    positions = [item.get("PlanePositionSequence", [Dataset()])[0].get("ImagePositionPatient") for item in frames]
    orientation = _frame_orientation(header)
    if len(frames) < 3 or orientation is None or any(position is None for position in positions):
        return
    normal = np.cross(orientation[:3], orientation[3:])
    problem = _stacking_problem(np.array(positions, dtype=float), normal, path, "multi-frame image")
    if problem is not None:
        raise InputError(
            f"{path}: frame {problem} across its {len(frames)} frames; frames are missing, repeated or out of "
            "order (evenly spaced frames in order of position are needed)"
        )


def _frame_orientation(header: Dataset) -> np.ndarray | None:
    """The row and column directions (6 numbers) of a multi-frame image's frames: shared, or the first frame's."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (header.get(groups) or [])[:1]:
            for plane in item.get("PlaneOrientationSequence", [])[:1]:
                if "ImageOrientationPatient" in plane:
                    return np.array(plane.ImageOrientationPatient, dtype=float)
    return None


def _stacking_problem(positions: np.ndarray, normal: np.ndarray, where: Path, what: str) -> str | None:
    """What is wrong with planes at `positions` (N, 3) as a stack along `normal`: gaps uneven ("gaps
    range from 5 to 10 mm"), or the order broken; None for evenly spaced planes in order. A stack
    oblique to its planes (gantry tilt) is refused here."""
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    # A gantry-tilted CT's slices are stacked obliquely to their planes: ITK's grid, square to
    # them, would misplace the last slices by centimetres (the mask, not the SEG's per-slice positions).
    if sideways.max() > MAX_SIDEWAYS_MM:
        tilt = np.degrees(np.arctan2(sideways[-1], abs(along[-1])))
        raise InputError(
            f"{where}: a gantry-tilted {what} (its slices stack {tilt:.1f} degrees off their normal); medsam2 needs slices "
            "stacked square to their planes: correct the tilt first (e.g. dcm2niix does)"
        )
    steps = np.diff(along)
    gaps = np.abs(steps)
    if gaps.min() > 0 and not (np.all(steps > 0) or np.all(steps < 0)):
        return "positions go back and forth"
    # 10 %: rounding of the position text and scanner jitter are far smaller; a missing slice doubles a gap.
    if gaps.min() <= 0 or gaps.max() > 1.1 * gaps.min():
        return f"gaps range from {gaps.min():.3g} to {gaps.max():.3g} mm"
    return None


# Transfer syntaxes of pixel encodings GDCM (ITK's DICOM reader) decodes to wrong values without an
# error (found against pydicom's decoders on its test files).
RLE_LOSSLESS, EXPLICIT_BIG_ENDIAN = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2"


def check_decoded_rightly(header: Dataset, path: Path) -> None:
    """Refuse pixel data GDCM would give wrong values for: RLE colour of more than 8 bits, 32-bit big endian."""
    syntax = str(getattr(header, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    bits, samples = int(header.get("BitsAllocated") or 0), int(header.get("SamplesPerPixel") or 1)
    if syntax == RLE_LOSSLESS and samples == 3 and bits > 8:
        what = "RLE-compressed colour of more than 8 bits"
    elif syntax == EXPLICIT_BIG_ENDIAN and bits == 32:
        what = "big-endian 32-bit"
    else:
        return
    raise InputError(
        f"{path}: {what} pixel data, which ITK's DICOM reader (GDCM) decodes to wrong values; convert the file "
        "to uncompressed little-endian DICOM first (DCMTK: dcmdrle for RLE, dcmconv +te for big endian)"
    )


def check_pixel_data_complete(header: Dataset, path: Path) -> None:
    """Refuse an uncompressed file shorter than the pixels its header states: GDCM reads one whose
    pixel data is cut short (or whose Rows and Columns were made up) as zeros filling the stated
    size, a scan of wrong values, which can be many gigabytes for a file of a few kilobytes."""
    try:
        values, bits = stated_values(header), int(header.get("BitsAllocated") or 0)
        encoding = transfer_syntax(header)
        compressed = encoding.is_compressed or encoding.is_deflated  # a deflated file is smaller than its pixels
    except (TypeError, ValueError, AttributeError):  # a value of no number, no syntax found: GDCM judges it
        return
    if compressed or not header.get("Rows") or not header.get("Columns") or values <= 0 or bits <= 0:
        return
    stated = (values * bits + 7) // 8
    size = Path(path).stat().st_size
    if size < stated:
        frames = int(header.get("NumberOfFrames") or 1)
        raise InputError(
            f"{path}: its pixel data is cut short: the header states {frames} frame(s) of {header.Columns}x{header.Rows} pixels "
            f"({stated} bytes), the whole file has {size}"
        )


def stated_values(header: Dataset) -> int:
    """Values (pixels times samples, over every frame) a header states its pixel data holds."""
    counts = [int(header.get(tag) or 1) for tag in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel")]
    return int(np.prod(counts, dtype=np.int64))


# Where a header gives the in-plane pixel spacing (GDCM takes 1 mm where none is).
PIXEL_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def states_pixel_spacing(header: Dataset) -> bool:
    """Whether a DICOM header gives its pixels' spacing: a tag of `PIXEL_SPACING_TAGS`, or a
    multi-frame image's pixel measures."""
    if any(tag in header for tag in PIXEL_SPACING_TAGS):
        return True
    groups = [*(header.get("SharedFunctionalGroupsSequence") or []), *(header.get("PerFrameFunctionalGroupsSequence") or [])[:1]]
    return any("PixelSpacing" in measures for item in groups for measures in item.get("PixelMeasuresSequence", []))


def _series_in_words(file: str) -> str:
    """'series 3 "Bone 1.0" (CT, e.g. IM0001.dcm)': how a viewer lists a series, and one of its
    files, which tells apart series of the same number (or none: it is type 2, often left empty)."""
    header = read_header(file, ["SeriesNumber", "SeriesDescription", "Modality"])
    description = str(header.get("SeriesDescription") or "").strip()
    number = header.get("SeriesNumber")
    number = "?" if number is None or str(number).strip() == "" else number
    modality = header.get("Modality") or "?"
    return f"series {number}" + (f' "{description}"' if description else "") + f" ({modality}, e.g. {Path(file).name})"


# Modalities whose rescaled values are measurements (HU, activity), not only grey levels to show.
MEASURING_MODALITIES = ("CT", "PT", "NM")


def measured_values(array: np.ndarray, files: list[str], first: Dataset) -> np.ndarray:
    """`array` (read by GDCM from `files`, one slice each; `first`: the first one's header) with a MONOCHROME1 CT, PET or NM image's
    values as its Modality LUT gives them. GDCM inverts MONOCHROME1 pixels (high values shown dark)
    before rescaling, which suits a radiograph (its bone comes out bright, as models learnt it) but
    turns Hounsfield units into numbers near 65,000: undone per slice, (2^bits - 1) * slope +
    2 * intercept - value."""
    if modality_of(first) not in MEASURING_MODALITIES:
        return array
    if first.get("PhotometricInterpretation") != "MONOCHROME1":  # a series has one photometric interpretation
        return array
    headers = [read_header(file) for file in files]
    measured = array.astype(np.float64)
    for index, header in enumerate(headers):
        slope, intercept = float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)
        measured[index] = (2 ** int(header.get("BitsStored", 16)) - 1) * slope + 2 * intercept - measured[index]
    return measured.astype(array.dtype) if np.array_equal(measured, np.round(measured)) else measured.astype(np.float32)


def frame_rescaled_values(array: np.ndarray, header: Dataset, path: Path) -> np.ndarray:
    """`array` (read by GDCM from the multi-frame image at `path`) with each frame rescaled by its own
    Pixel Value Transformation: GDCM applies one frame's slope and intercept to every frame, which
    turned a legacy-converted PET's or CT's frames scaled one by one into wrong values (HU off by
    hundreds on every other frame). Unchanged where the frames share one rescale."""
    shared = (header.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = header.get("PerFrameFunctionalGroupsSequence") or []

    def rescale(item: Dataset) -> tuple[float, float] | None:
        for transform in item.get("PixelValueTransformationSequence", [])[:1]:
            return float(transform.get("RescaleSlope", 1) or 1), float(transform.get("RescaleIntercept", 0) or 0)
        return None

    per_frame = [rescale(item) or rescale(shared) or (1.0, 0.0) for item in frames]
    if len(set(per_frame)) <= 1 or len(per_frame) != array.shape[0] or array.ndim != 3:
        return array
    stored = pydicom.dcmread(path).pixel_array.reshape(array.shape).astype(np.float64)
    slopes, intercepts = (np.array(values)[:, np.newaxis, np.newaxis] for values in zip(*per_frame))
    measured = stored * slopes + intercepts
    return measured.astype(np.int32) if np.array_equal(measured, np.round(measured)) else measured.astype(np.float32)


def dose_values(array: np.ndarray, header: Dataset) -> np.ndarray:
    """An RT Dose's stored values as dose (Gy, or relative), scaled by its Dose Grid Scaling: GDCM
    applies no such factor (a dose of 1.254 Gy stored as 1254000 at 1e-6). Other images unchanged."""
    if str(header.get("Modality", "")).strip().upper() != "RTDOSE" or "DoseGridScaling" not in header:
        return array
    scaling = float(header.DoseGridScaling)
    return array if scaling == 1.0 else (array.astype(np.float64) * scaling).astype(np.float32)


def stated_modality(header: Dataset) -> str:
    """The Modality tag (0008,0060) as written, upper case ("" where there is none)."""
    return str(header.get("Modality", "")).strip().upper()


def modality_of(header: Dataset) -> Modality:
    """The Modality tag of a header when it is one medsam2 knows, else "unknown"."""
    value = stated_modality(header)
    return value if value in get_args(Modality) else "unknown"  # type: ignore[return-value]


def is_segmentation(path: Path) -> bool:
    """True for a DICOM-SEG file (Modality SEG)."""
    return is_dicom_file(path) and stated_modality(read_header(path, ["Modality"])) == "SEG"


def read_segmentation(path: Path, sources: Sequence[Dataset]) -> tuple[np.ndarray, dict[int, str]]:
    """The label map (Z, Y, X) a DICOM-SEG draws on `sources`, frame k over the k-th frame of the
    sources as `build_segmentation` takes them; each segment's number is its label (overlaps: the
    higher number). With it, the names the segments are given (their labels, but the placeholder
    `build_segmentation` writes for an unnamed one). A SEG of another series, or one that cannot be
    read, is a one-line InputError."""
    try:
        segmentation = hd.seg.segread(path)
    except Exception as error:  # highdicom raises many kinds for a damaged or foreign file
        raise InputError(f"{path}: cannot read the DICOM-SEG ({first_line(error)})") from error
    referenced = {uid for _, _, uid in segmentation.get_source_image_uids()}
    ours = [str(source.SOPInstanceUID) for source in sources]
    if not referenced & set(ours):
        raise InputError(f"{path}: this DICOM-SEG segments another series than the image given with it")
    # A segment is the object its Tracking ID names ("object 3", as `build_segmentation` writes),
    # else the object of its number (other tools' SEGs).
    label_of = {int(segment.SegmentNumber): tracked_object(segment) for segment in segmentation.SegmentSequence}
    largest = max(label_of.values(), default=0)
    dtype = np.uint8 if largest <= np.iinfo(np.uint8).max else np.uint16  # a label map's usual size
    # Slices a SEG does not reference hold no segment (tools that write SEGs referencing only the
    # slices they segment leave the others out).
    options = {"combine_segments": True, "skip_overlap_checks": True, "assert_missing_frames_are_empty": True, "dtype": dtype}
    try:
        if len(sources) == 1 and int(sources[0].get("NumberOfFrames") or 1) > 1:
            frames = range(1, int(sources[0].NumberOfFrames) + 1)
            labels = segmentation.get_pixels_by_source_frame(ours[0], list(frames), **options)
        else:
            labels = segmentation.get_pixels_by_source_instance(ours, **options)
    except (ValueError, KeyError, RuntimeError) as error:
        raise InputError(f"{path}: its frames do not map onto the image's ({first_line(error)})") from error
    if any(number != label for number, label in label_of.items()):
        to_label = np.zeros(max(label_of) + 1, dtype=dtype)
        to_label[list(label_of)] = list(label_of.values())
        labels = to_label[labels]
    segments = ((label_of[int(segment.SegmentNumber)], str(segment.get("SegmentLabel", "")).strip()) for segment in segmentation.SegmentSequence)
    return labels, {label: name for label, name in segments if name and name != unnamed_segment(label)}


def tracked_object(segment: Dataset) -> int:
    """The object id a segment's Tracking ID names, else its segment number."""
    match = re.fullmatch(rf"{TRACKING_PREFIX}(\d+)", str(segment.get("TrackingID", "")).strip())
    return int(match.group(1)) if match else int(segment.SegmentNumber)


def unnamed_segment(label: int) -> str:
    """The segment label `build_segmentation` gives a label without a name."""
    return f"label {label}"


def build_segmentation(
    labels: np.ndarray,
    sources: Sequence[Dataset],
    names: Mapping[int, str | None] | None = None,
    slice_thickness: float = 1.0,
) -> hd.seg.Segmentation:
    """A BINARY DICOM-SEG with one segment per label present, referencing `sources`; a segment's
    label is the object's name in `names` (the first 64 characters, as DICOM allows), else "label N".
    Segments are numbered 1..N, as DICOM wants them, and each names its object's id in its Tracking
    ID ("object 3"), which `read_segmentation` maps back: a map of objects 1 and 3 makes two
    segments, not an empty "label 2" between them (nor 499 for an object 500).

    `labels[k]` must overlay the k-th frame of the sources: the k-th file of a series in the order of
    `read_largest_series`, or the k-th frame of a single (possibly multi-frame) file.
    `slice_thickness` (mm) is stated where the sources state none.
    """
    from medsam2 import __version__  # here, not at import time: the package root may import io

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsam2", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    objects = [int(label) for label in np.unique(labels) if label != 0] or [1]  # an empty map: one empty segment
    numbered = np.zeros(max(objects) + 1, dtype=np.uint16 if len(objects) > 255 else np.uint8)
    numbered[objects] = np.arange(1, len(objects) + 1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=((names or {}).get(label) or unnamed_segment(label))[:SEGMENT_LABEL_LENGTH],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"{TRACKING_PREFIX}{label}",
            tracking_uid=hd.UID(),
        )
        for number, label in enumerate(objects, start=1)
    ]
    labels = numbered[labels]
    segmentation = hd.seg.Segmentation(
        source_images=_completed_for_seg(sources, slice_thickness),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber") or 0) + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsam2",
        manufacturer_model_name="medsam2",
        software_versions=__version__,
        device_serial_number="none",
    )
    # One frame per segment and source frame it marks: highdicom makes fewer for some multi-frame
    # images (frames without plane positions), a SEG that reads back empty.
    wanted = sum(int((labels == number).reshape(len(labels), -1).any(axis=1).sum()) for number in range(1, int(labels.max()) + 1))
    if int(segmentation.NumberOfFrames) != wanted:
        raise ValueError(
            f"its {counted(int(segmentation.NumberOfFrames), 'frame')} would not map onto the {wanted} marked frames of the image; "
            "write the mask in another format (.nii.gz)"
        )
    return segmentation


# Type 2 attributes of the patient and study modules that highdicom copies from the sources into a
# SEG: DICOM lets them be empty, and anonymisers often remove them instead.
PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


def _completed_for_seg(sources: Sequence[Dataset], slice_thickness: float) -> Sequence[Dataset]:
    """`sources`, or copies of their headers completed as a SEG needs them: stating `slice_thickness`
    where single-frame sources state none (an anonymiser's blank, a secondary capture: highdicom
    copies their pixel measures into the SEG, and no reader, highdicom's own included, opens a SEG
    whose measures lack it), and with the patient and study attributes they lack present but empty."""
    thickness_missing = "SharedFunctionalGroupsSequence" not in sources[0] and not all(source.get("SliceThickness") for source in sources)
    absent = [keyword for keyword in PATIENT_STUDY_TYPE2 if keyword not in sources[0]]
    if not thickness_missing and not absent:
        return sources
    completed = []
    for source in sources:
        header = copy.deepcopy(source)
        if thickness_missing:
            header.SliceThickness = header.get("SliceThickness") or pydicom.valuerep.DS(slice_thickness, auto_format=True)
        for keyword in absent:
            if keyword not in header:  # only where missing: another source's value is kept
                setattr(header, keyword, "")
        completed.append(header)
    return completed
