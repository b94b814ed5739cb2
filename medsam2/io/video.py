"""Videos: echocardiography and other ultrasound cine loops, endoscopy clips, as frames on demand.

A `Video` carries what `Volume` carries for scans (frame rate and pixel spacing instead of 3D
geometry) but not its pixels: frames are read in ranges (`Video.read`), so a ten-minute clip is
never in memory at once. Inputs:

- containers read through FFmpeg (PyAV): MP4, AVI, MOV, MKV, WebM... (`VIDEO_SUFFIXES`); frame rate
  from the stream; grey pixel formats stay grey, everything else is decoded to RGB;
- a folder of PNG/JPEG/BMP/TIFF frames, in natural name order (frame_2 before frame_10); no frame rate;
- a multi-frame DICOM file (ultrasound, endoscopy or angiography cine): frame rate from Frame Time,
  Frame Time Vector, Cine Rate or Recommended Display Frame Rate; pixel spacing from Pixel Spacing
  or the calibrated ultrasound region (Sequence of Ultrasound Regions, cm converted to mm);
- a NIfTI 2D+t sequence: 4D ``(x, y, 1, t)`` with the frame interval in ``pixdim[4]`` (its time unit
  must be set), or 3D ``(x, y, t)`` as CAMUS' ``*_half_sequence.nii.gz``, whose frame rate is read
  from the ``FrameRate`` line of the ``Info_<view>.cfg`` beside it.

Frames are ``(T, H, W)`` grey or ``(T, H, W, 3)`` RGB in the file's own dtype, rows and columns as
`medsam2.io.volume` counts them (a NIfTI frame is oriented as SimpleITK reads the file).
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NoReturn, Protocol

import nibabel as nib
import numpy as np
import pydicom
import pydicom.pixels
from PIL import UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from medsam2.errors import InputError
from medsam2.io import dicom
from medsam2.io.lazy_import import lazy_module
from medsam2.io.masks import as_label_map, load_mask
from medsam2.io.paths import VIDEO_SUFFIXES, natural_key
from medsam2.io.readers import (
    PICTURE_SUFFIXES,
    file_suffix,
    is_frame_folder,
    is_picture_file,
    library_reason,
    load_nifti,
    picture_size,
    read_picture,
)
from medsam2.io.volume import Modality

NIFTI_SUFFIXES = (".nii", ".nii.gz")
CAMUS_SEQUENCE = re.compile(r"^(?P<patient>.+)_(?P<view>[^_]+)_half_sequence\.nii(\.gz)?$", re.IGNORECASE)
GREY_PIXEL_FORMATS = ("gray", "ya8", "monob", "monow")  # prefixes of FFmpeg's grey formats
SEEK_ATTEMPTS = 3  # key frames tried before a frame (latest first) before decoding from the start
# Units of the ultrasound region's Physical Delta X/Y (DICOM PS3.3 C.8.5.5.1.15): 3 = cm.
US_UNITS_CM = 3
# NIfTI xyzt_units time codes, in seconds.
NIFTI_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
NIFTI_SPACE_UNITS = {"unknown": 1.0, "meter": 1000.0, "mm": 1.0, "micron": 1e-3}
# PyAV only for video files: folders of frames, cine DICOM and NIfTI read where it is not installed.
av = lazy_module("av")
# What the libraries raise on damaged files.
_READ_ERRORS = (
    OSError, EOFError, ValueError, InvalidDicomError, UnidentifiedImageError, nib.filebasedimages.ImageFileError,
) + ((av.FFmpegError,) if importlib.util.find_spec("av") else ())


class FrameSource(Protocol):
    """Where a video's frames come from: a file read in ranges, or an array."""

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` (inclusive) to ``stop`` (exclusive), (n, H, W) or (n, H, W, 3)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Video:
    """A clip: its frames on demand, frame rate and pixel spacing. Close it (or use `with`) when done."""

    frames: FrameSource = field(repr=False, compare=False)
    num_frames: int
    frame_shape: tuple[int, int]  # (H, W): rows, columns
    is_color: bool
    frame_rate: float | None = None  # frames per second (the mean, for a variable rate); None when the input does not say
    # Seconds of each frame from the first, where the input times each frame (a container's
    # timestamps, a DICOM Frame Time Vector): a variable frame rate's frames keep their times.
    frame_times: tuple[float, ...] | None = field(default=None, repr=False)
    pixel_spacing: tuple[float, float] | None = None  # (sx, sy) mm between columns, between rows
    modality: Modality = "unknown"
    source: Path | None = None
    # Format-specific extras the writers need to mirror the input (the NIfTI header...).
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W): frames, rows, columns."""
        return (self.num_frames, *self.frame_shape)

    @property
    def name(self) -> str:
        return str(self.source) if self.source is not None else "video"

    def time_of(self, index: int) -> float | None:
        """Seconds from the first frame to frame `index`; None when the input gives no timing."""
        if self.frame_times is not None:
            return self.frame_times[index]
        return index / self.frame_rate if self.frame_rate else None

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start`` to ``stop`` (exclusive; default: to the end)."""
        stop = self.num_frames if stop is None else stop
        if not 0 <= start < stop <= self.num_frames:
            raise ValueError(f"frame range {start}..{stop} outside 0..{self.num_frames}")
        try:
            return self.frames.read(start, stop)
        except InputError:
            raise
        except _READ_ERRORS as error:
            raise InputError(f"{self.name}: cannot read frames {start}..{stop - 1} ({library_reason(error)})") from error

    def close(self) -> None:
        self.frames.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def video_from_array(
    frames: np.ndarray,
    frame_rate: float | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    source: Path | None = None,
) -> Video:
    """A `Video` around frames already in memory, (T, H, W) or (T, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3) or frames.shape[0] == 0:
        raise InputError(f"{source or 'video'}: frames of shape {frames.shape}; expected (T, H, W) or (T, H, W, 3), T >= 1")
    return Video(
        frames=_ArrayFrames(frames),
        num_frames=frames.shape[0],
        frame_shape=(frames.shape[1], frames.shape[2]),
        is_color=frames.ndim == 4,
        frame_rate=frame_rate,
        pixel_spacing=pixel_spacing,
        source=source,
    )


# -- recognising and opening videos ------------------------------------------------------------------


def is_video(path: str | Path) -> bool:
    """Whether `path` is read as a video rather than a scan: a video container, a folder of pictures
    (without DICOM files), a cine DICOM file, a 2D+t NIfTI (4D with one slice, or CAMUS' 3D
    ``*_half_sequence``). Unreadable files are not videos (the scan reader then says what is wrong)."""
    path = Path(path)
    if path.is_dir():
        return is_frame_folder(path)
    suffix = file_suffix(path)
    if suffix in VIDEO_SUFFIXES:
        return True
    try:
        if suffix in NIFTI_SUFFIXES:
            return CAMUS_SEQUENCE.match(path.name) is not None or _is_nifti_2d_t(load_nifti(path).shape)
        if dicom.is_dicom_file(path):
            return _is_cine(dicom.read_header(path))
    except _READ_ERRORS:
        return False
    return False


def load_video(path: str | Path) -> Video:
    """Open a video (any form of this module's doc) for reading; frames are decoded when asked for."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            video = _open_frame_folder(path)
        elif file_suffix(path) in VIDEO_SUFFIXES:
            video = _open_container(path)
        elif file_suffix(path) in NIFTI_SUFFIXES:
            video = _open_nifti(path)
        elif file_suffix(path) == ".dcm" or dicom.is_dicom_file(path):
            video = _open_dicom(path)
        else:
            raise InputError(
                f"{path}: not a video (read: {' '.join(VIDEO_SUFFIXES)}, .nii/.nii.gz 2D+t, cine DICOM, a folder of frames)"
            )
    except InputError:
        raise
    except _READ_ERRORS as error:
        # FFmpeg's "invalid data" is all it says of an MP4 whose index (at its end) was cut off
        damaged = ", not a video or one cut short or damaged" if isinstance(error, av.InvalidDataError) else ""
        raise InputError(f"{path}: cannot read{damaged} ({library_reason(error)})") from error
    try:
        _check_ends(video)
    except InputError:
        video.close()
        raise
    return video


def _check_ends(video: Video) -> None:
    """Decode the first and the last frame: a damaged file, or one cut short (a copy or transfer
    broken off), is found at open, before any model loads, not when propagation reaches its end."""
    for index in sorted({0, video.num_frames - 1}):
        try:
            video.frames.read(index, index + 1)
        except InputError:
            raise
        except _READ_ERRORS as error:
            raise InputError(
                f"{video.name}: frame {index + 1} of {video.num_frames} cannot be read, the file is cut short or damaged ({library_reason(error)})"
            ) from None


def is_video_mask(path: str | Path) -> bool:
    """Whether the mask file `path` labels a video's frames rather than a scan's slices: a 2D+t
    NIfTI, or an npz as `segment` writes for a video (with its ``frame_rate`` or ``pixel_spacing``)."""
    path = Path(path)
    if file_suffix(path) == ".npz":
        try:
            with np.load(path) as archive:
                return bool({"frame_rate", "pixel_spacing"} & set(archive.files))
        except (*_READ_ERRORS, zipfile.BadZipFile):
            return False  # the mask reader says what is wrong
    return file_suffix(path) in NIFTI_SUFFIXES and is_video(path)


def video_mask_pixel_spacing(path: str | Path) -> tuple[float, float] | None:
    """(sx, sy) mm of a video mask file's pixels: an npz's ``pixel_spacing``, a NIfTI's pixdim;
    None where the file gives none."""
    path = Path(path)
    if file_suffix(path) == ".npz":
        with np.load(path) as archive:
            if "pixel_spacing" not in archive.files:
                return None
            spacing = np.asarray(archive["pixel_spacing"], dtype=float).ravel()
        if spacing.shape != (2,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
            raise InputError(f"{path}: pixel_spacing {spacing.tolist()} is not two positive numbers (sx, sy) in mm")
        return float(spacing[0]), float(spacing[1])
    if file_suffix(path) in NIFTI_SUFFIXES:
        return _nifti_pixel_spacing(load_nifti(path).header)
    return None


def load_video_mask(path: str | Path) -> np.ndarray:
    """Per-frame label maps (T, H, W) from a mask sequence: an npz (``segs``, else ``gts``), a NIfTI
    2D+t or 3D (x, y, t), or a folder of label PNGs; a single 2D label picture gives (1, H, W)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such mask file or folder")
    if file_suffix(path) in (".npz", *PICTURE_SUFFIXES):  # what the scan reader reads as a label map
        return load_mask(path).array
    with load_video(path) as video:
        if video.is_color:
            raise InputError(f"{path}: a colour video is not a label map")
        return as_label_map(video.read(), path)


# -- arrays ------------------------------------------------------------------------------------------


class _ArrayFrames:
    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.frames[start:stop]

    def close(self) -> None:
        pass


# -- folders of pictures -----------------------------------------------------------------------------


class _FolderFrames:
    def __init__(self, files: list[Path], first: np.ndarray):
        self.files = files
        self.first = first

    def read(self, start: int, stop: int) -> np.ndarray:
        frames = np.empty((stop - start, *self.first.shape), dtype=self.first.dtype)
        for position, file in enumerate(self.files[start:stop]):
            frame = read_picture(file)
            if frame.shape != self.first.shape:  # grey among colour frames: sizes were checked on opening
                raise _unlike_first(file, frame.shape, self.first.shape)
            frames[position] = frame
        return frames

    def close(self) -> None:
        pass


def _unlike_first(file: Path, shape: tuple[int, ...], first: tuple[int, ...]) -> InputError:
    return InputError(f"{file}: frame of shape {shape}, but the first frame's is {first}")


def _open_frame_folder(folder: Path) -> Video:
    files = sorted((entry for entry in folder.iterdir() if entry.is_file() and is_picture_file(entry)), key=lambda entry: natural_key(entry.name))
    if not files:
        raise InputError(f"{folder}: no frames in this folder (expected {', '.join(PICTURE_SUFFIXES)} pictures)")
    first = read_picture(files[0])
    if first.ndim == 3 and first.shape[-1] != 3:
        raise InputError(f"{files[0]}: {first.shape[-1]} channels per pixel; expected grey or RGB")
    for file in files[1:]:  # before any work: a frame of another size would stop a run midway
        if (size := picture_size(file)) != first.shape[:2]:
            raise _unlike_first(file, size, first.shape[:2])
    return Video(
        frames=_FolderFrames(files, first),
        num_frames=len(files),
        frame_shape=first.shape[:2],
        is_color=first.ndim == 3,
        source=folder,
        meta={"frame_files": [file.name for file in files]},
    )


# -- containers (FFmpeg through PyAV) ----------------------------------------------------------------


class _ContainerFrames:
    """Frames of a container's first video stream, by index.

    Indices come from the presentation timestamps of the stream's packets (one frame each), sorted;
    a read continues decoding where the last one stopped, and otherwise seeks to the key frame
    before the first wanted frame and decodes forward from there. Reading forward is thus one
    decoding pass; reading backward costs at most a key-frame interval per range."""

    def __init__(self, path: Path):
        self.path = path
        self.container = av.open(str(path))
        try:
            if not self.container.streams.video:
                raise InputError(f"{path}: no video stream in this file")
            self.stream = self.container.streams.video[0]
            if self.stream.codec_context is None:  # the header naming the codec is missing
                raise InputError(f"{path}: the video stream's codec is unknown, the file is cut short or damaged")
            packets = self._packet_timestamps()
        except BaseException:
            self.container.close()
            raise
        self.timestamps = sorted(timestamp for timestamp, _ in packets)
        self.key_timestamps = sorted(timestamp for timestamp, key in packets if key)
        self.index_of = {timestamp: index for index, timestamp in enumerate(self.timestamps)}
        pixel_format = self.stream.codec_context.pix_fmt or ""
        self.format = "gray" if pixel_format.startswith(GREY_PIXEL_FORMATS) else "rgb24"
        self.quarter_turns = self._display_quarter_turns() if self.timestamps else 0
        self.decoded: Iterator[av.VideoFrame] | None = None
        self.next_index = 0
        self.last: tuple[int, np.ndarray] | None = None

    def _display_quarter_turns(self) -> int:
        """Quarter turns (counter-clockwise, as `np.rot90` counts) that show the frames as players
        do: a phone's portrait clip is stored landscape with a display rotation in its header
        (FFmpeg's angle, counter-clockwise; read from the first frame's side data)."""
        first = next(iter(self.container.decode(self.stream)), None)
        self._rewind()
        angle = float(getattr(first, "rotation", 0) or 0)
        return round(angle / 90) % 4

    def _rewind(self) -> None:
        """Back to the file's start. Reopened rather than sought: a Matroska/WebM file without its
        index (one cut short) cannot seek, and FFmpeg says "Operation not permitted"."""
        self.container.close()
        self.container = av.open(str(self.path))
        self.stream = self.container.streams.video[0]
        self.decoded = None

    def _packet_timestamps(self) -> list[tuple[int, bool]]:
        """(timestamp, is it a key frame) of every packet, in decoding order."""
        packets, dropped = [], 0
        for packet in self.container.demux(self.stream):
            timestamp = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0:  # the flushing packet at the end, or a frame an AVI marks dropped
                dropped += timestamp is not None
                continue
            if timestamp is None:
                raise InputError(f"{self.path}: video packets without timestamps; re-encode it (e.g. ffmpeg -i IN OUT.mp4)")
            packets.append((timestamp, packet.is_keyframe))
        held = len(packets) + dropped
        declared = self.stream.frames  # the header's count (AVI, MP4), 0 where it keeps none
        if not held and (declared or self.container.duration):
            self._cut_short("holds none of the frames its header declares")
        elif declared and held < declared:
            self._cut_short(f"holds {held} of the {declared} frames its header declares")
        elif not declared and (missing := self._seconds_missing(sorted(timestamp for timestamp, _ in packets))):
            self._cut_short(f"its frames end {missing:.2f} s before the {self.container.duration / 1e6:.2f} s its header declares")
        self._rewind()
        return packets

    def _seconds_missing(self, timestamps: list[int]) -> float | None:
        """Seconds of a Matroska/WebM clip (no frame count in its header, only a duration) past its
        last frame, where more than a frame and a half's time is missing (the last frame's own time
        may be longer than the others' at a variable rate); None otherwise, or where the duration may
        be another stream's (an audio track running on)."""
        base, rate = self.stream.time_base, self.stream.average_rate or self.stream.guessed_rate
        if not timestamps or not base or not self.container.duration or len(self.container.streams) != 1:
            return None
        if len(timestamps) > 1:  # a variable rate's last frames may be the slow ones
            intervals = np.diff(timestamps)
            step = float(max(np.median(intervals), intervals[-1]) * base)
        elif rate:
            step = 1 / float(rate)
        else:
            return None
        covered = float((timestamps[-1] - timestamps[0]) * base) + step
        missing = self.container.duration / 1e6 - covered
        return missing if missing > 1.5 * step else None

    def _cut_short(self, what: str) -> NoReturn:
        raise InputError(
            f"{self.path}: {what}, the file is cut short or damaged (to use the frames it holds, re-encode it: ffmpeg -i IN OUT.mp4)"
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        frames = []
        if self.last is not None and self.last[0] == start:  # successive windows share a frame
            frames.append(self.last[1])
        first = start + len(frames)
        if first < stop and (self.decoded is None or first != self.next_index):
            self._seek(first)
        while len(frames) < stop - start:
            frame = next(self.decoded, None)
            if frame is None:
                raise InputError(f"{self.path}: the video ends at frame {self.next_index} of {len(self.timestamps)} (damaged file?)")
            index = self.index_of.get(frame.pts if frame.pts is not None else frame.dts)
            if index is not None and index < first:  # decoded from the key frame before the wanted one
                continue
            if index != start + len(frames):
                raise InputError(f"{self.path}: frame {start + len(frames)} does not decode (damaged file?)")
            frames.append(np.ascontiguousarray(np.rot90(frame.to_ndarray(format=self.format), self.quarter_turns)))
            self.next_index = index + 1
        self.last = (stop - 1, frames[-1])
        return np.stack(frames)

    def _seek(self, index: int) -> None:
        """Decode from a key frame at or before frame `index`. Containers seek differently (MPEG
        program and transport streams, AVI with B-frames land a key frame or more late): where
        decoding starts past the frame, seek to the key frame before, and at last to the start."""
        wanted = self.timestamps[index]
        earlier_keys = [timestamp for timestamp in self.key_timestamps if timestamp <= wanted][::-1][:SEEK_ATTEMPTS]
        for key in [*earlier_keys, None]:
            if key is None:
                self._rewind()  # the file's start, in any container
            else:
                try:
                    self.container.seek(key, stream=self.stream, backward=True, any_frame=False)
                except (av.FFmpegError, OSError):  # a file without an index: decode from the start
                    continue
            decoded = iter(self.container.decode(self.stream))
            first = next(decoded, None)
            if first is None:
                continue
            first_index = self.index_of.get(first.pts if first.pts is not None else first.dts)
            if first_index is not None and first_index <= index:
                self.decoded = itertools.chain([first], decoded)
                self.next_index = first_index
                return
        raise InputError(f"{self.path}: frame {index} cannot be reached by seeking (damaged file?)")

    def close(self) -> None:
        self.container.close()


def _open_container(path: Path) -> Video:
    frames = _ContainerFrames(path)
    if not frames.timestamps:
        frames.close()
        raise InputError(f"{path}: the video has no frames")
    context = frames.stream.codec_context
    stored = (context.height, context.width)
    base = frames.stream.time_base
    times = tuple(float((timestamp - frames.timestamps[0]) * base) for timestamp in frames.timestamps) if base else None
    return Video(
        frames=frames,
        num_frames=len(frames.timestamps),
        frame_times=times,
        frame_shape=stored[::-1] if frames.quarter_turns % 2 else stored,  # as shown, turned upright
        is_color=frames.format == "rgb24",
        frame_rate=_container_frame_rate(frames.stream, frames.timestamps),
        source=path,
    )


def _container_frame_rate(stream: av.VideoStream, timestamps: list[int]) -> float | None:
    """The stream's frame rate, unless the frames' own timestamps contradict it by more than their
    rounding (an animated GIF's is FFmpeg's guess from one delay: 50/3 fps for frames 6 and 7 cs
    apart, 15 fps): then the timestamps' mean rate, which the frame times written beside it
    (`Video.frame_times`) agree with."""
    rate = stream.average_rate or stream.guessed_rate
    base = stream.time_base
    if len(timestamps) < 2 or not base or timestamps[-1] == timestamps[0]:
        return float(rate) if rate else None
    intervals = len(timestamps) - 1
    mean_interval = (timestamps[-1] - timestamps[0]) * base / intervals
    if rate and abs(1 / rate - mean_interval) <= base / intervals:  # within a tick over the clip
        return float(rate)
    return float(1 / mean_interval)


# -- DICOM cine --------------------------------------------------------------------------------------


def _is_cine(dataset: pydicom.Dataset) -> bool:
    """A multi-frame DICOM that is a sequence in time (not the slices of an enhanced CT/MR)."""
    timed = any(tag in dataset for tag in ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate"))
    return int(dataset.get("NumberOfFrames", 1) or 1) > 1 and (timed or dataset.get("Modality") in ("US", "ES", "XA"))


class _DicomFrames:
    def __init__(self, path: Path, photometric: str, bits_stored: int, encoding: pydicom.uid.UID):
        self.path = path
        self.encoding = encoding
        self.photometric = photometric
        self.bits_stored = bits_stored

    def read(self, start: int, stop: int) -> np.ndarray:
        frames = np.stack(list(pydicom.pixels.iter_pixels(self.path, indices=range(start, stop), transfer_syntax_uid=self.encoding)))
        if self.photometric == "MONOCHROME1":  # low values are white
            frames = (2**self.bits_stored - 1) - frames
        elif self.photometric == "PALETTE COLOR":
            frames = pydicom.pixels.apply_color_lut(frames, dicom.read_header(self.path))
        return frames

    def close(self) -> None:
        pass


def _open_dicom(path: Path) -> Video:
    dataset = pydicom.dcmread(path, defer_size="1 KB", force=True)
    if "PixelData" not in dataset:
        raise InputError(f"{path}: no pixel data in this DICOM file")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    color = int(dataset.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR"
    modality = str(dataset.get("Modality", "")).upper()
    video = Video(
        frames=_DicomFrames(path, photometric, int(dataset.get("BitsStored", 8)), dicom.transfer_syntax(dataset)),
        num_frames=count,
        frame_shape=(int(dataset.Rows), int(dataset.Columns)),
        is_color=color,
        frame_rate=_dicom_frame_rate(dataset),
        frame_times=_dicom_frame_times(dataset, count),
        pixel_spacing=_dicom_pixel_spacing(dataset),
        modality=modality if modality in ("US", "XA", "ES", "OT") else "unknown",  # type: ignore[arg-type]
        source=path,
    )
    return video


def _dicom_frame_rate(dataset: pydicom.Dataset) -> float | None:
    if float(dataset.get("FrameTime", 0) or 0) > 0:  # ms between frames
        return 1000.0 / float(dataset.FrameTime)
    vector = [float(v) for v in dataset.get("FrameTimeVector", []) or []]
    if len(vector) > 1 and np.mean(vector[1:]) > 0:  # ms since the previous frame; the first is 0
        return 1000.0 / float(np.mean(vector[1:]))
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        if float(dataset.get(tag, 0) or 0) > 0:
            return float(dataset.get(tag))
    return None


def _dicom_frame_times(dataset: pydicom.Dataset, count: int) -> tuple[float, ...] | None:
    """Each frame's seconds from the first, from a Frame Time Vector (ms since the previous frame)
    where no single Frame Time is given and the vector times every frame."""
    vector = [float(v) for v in dataset.get("FrameTimeVector", []) or []]
    if float(dataset.get("FrameTime", 0) or 0) > 0 or len(vector) != count or min(vector[1:], default=1.0) <= 0:
        return None
    return tuple(float(t) for t in np.cumsum([0.0, *vector[1:]]) / 1000.0)


def _dicom_pixel_spacing(dataset: pydicom.Dataset) -> tuple[float, float] | None:
    if "PixelSpacing" in dataset:  # (between rows, between columns) = (sy, sx)
        sy, sx = (float(v) for v in dataset.PixelSpacing)
        return (sx, sy)
    for region in dataset.get("SequenceOfUltrasoundRegions", []):
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        if units == (US_UNITS_CM, US_UNITS_CM) and "PhysicalDeltaX" in region and "PhysicalDeltaY" in region:
            return (abs(float(region.PhysicalDeltaX)) * 10.0, abs(float(region.PhysicalDeltaY)) * 10.0)
    return None


# -- NIfTI 2D+t --------------------------------------------------------------------------------------


def _is_nifti_2d_t(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] == 1


class _NiftiFrames:
    def __init__(self, image: nib.Nifti1Image):
        self.image = image

    def read(self, start: int, stop: int) -> np.ndarray:
        proxy = self.image.dataobj
        block = proxy[:, :, 0, start:stop] if len(self.image.shape) == 4 else proxy[:, :, start:stop]
        return np.ascontiguousarray(np.asarray(block).transpose(2, 1, 0))  # (x, y, t) -> (t, y, x)

    def close(self) -> None:
        pass


def _open_nifti(path: Path) -> Video:
    image = load_nifti(path)
    shape = image.shape
    if not (len(shape) == 3 or _is_nifti_2d_t(shape)):
        raise InputError(f"{path}: shape {shape} is not a 2D+t sequence (expected (x, y, t) or (x, y, 1, t))")
    if image.get_data_dtype().names is not None:
        raise InputError(f"{path}: colour NIfTI sequences are not supported; store grey frames")
    header = image.header
    time_unit = header.get_xyzt_units()[1]
    zooms = header.get_zooms()
    if len(shape) == 4:
        # a Python float: pixdim is float32, whose 1/0.04 s is 24.999998 fps and which Fraction (the
        # overlay's frame rate) refuses
        step = float(zooms[3]) * NIFTI_TIME_UNITS[time_unit] if time_unit in NIFTI_TIME_UNITS and zooms[3] > 0 else None
        frame_rate = 1.0 / step if step else None
    else:
        frame_rate = _camus_frame_rate(path)
    return Video(
        frames=_NiftiFrames(image),
        num_frames=shape[-1],
        frame_shape=(shape[1], shape[0]),
        is_color=False,
        frame_rate=frame_rate,
        pixel_spacing=_nifti_pixel_spacing(header),
        source=path,
        meta={"nifti_header": header.copy(), "nifti_affine": image.affine},
    )


def _nifti_pixel_spacing(header: nib.Nifti1Header) -> tuple[float, float] | None:
    """(sx, sy) mm from a 2D+t NIfTI's pixdim and space unit. An unknown unit is taken as mm (as
    ITK does: nibabel leaves the unit unset), except with pixels of 1 x 1, which is how a file
    without calibration reads (our masks of an uncalibrated video say so)."""
    space_unit = header.get_xyzt_units()[0]
    sx, sy = (float(zoom) for zoom in header.get_zooms()[:2])
    if space_unit not in NIFTI_SPACE_UNITS or (space_unit == "unknown" and (sx, sy) == (1.0, 1.0)):
        return None
    return sx * NIFTI_SPACE_UNITS[space_unit], sy * NIFTI_SPACE_UNITS[space_unit]


def _camus_frame_rate(path: Path) -> float | None:
    """The FrameRate line of CAMUS' ``Info_<view>.cfg`` beside a ``*_<view>_half_sequence`` file."""
    match = CAMUS_SEQUENCE.match(path.name)
    info = path.with_name(f"Info_{match['view']}.cfg") if match else None
    if info is None or not info.is_file():
        return None
    for line in info.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "FrameRate":
            try:
                rate = float(value)
            except ValueError:
                raise InputError(f"{info}: FrameRate {value.strip()!r} is not a number") from None
            return rate if rate > 0 else None
    return None


def frame_rate_fraction(frame_rate: float) -> Fraction:
    """A frame rate as the fraction containers store (29.97 -> 30000/1001)."""
    return Fraction(frame_rate).limit_denominator(1001)
