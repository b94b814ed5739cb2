"""What a segmented video is written as, frame chunk by frame chunk, so a long clip's results never
sit in memory whole: per-frame label maps (npz, NIfTI 2D+t or a folder of PNGs), an overlay MP4 of
contours and names on the frames, and tables and plots of per-frame values.

Every writer is a context manager yielding a function that takes the next chunk of frames; the
output appears at its path only when the block ends without error (written beside it under a
hidden temporary name, then renamed), so a failure leaves nothing half-written.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from medsam2.errors import InputError
from medsam2.io.atomic import atomic_folder, atomic_path, atomic_write_text
from medsam2.io.lazy_import import lazy_module
from medsam2.io.overlay import label_colour, overlay_slice
from medsam2.io.readers import file_suffix
from medsam2.io.video import NIFTI_SUFFIXES, Video, frame_rate_fraction

av = lazy_module("av")  # only for the overlay MP4: masks, tables and plots are written without PyAV

MASK_SEQUENCE_FORMATS = ".npz (key segs), .nii.gz/.nii (2D+t), or a folder (one label PNG per frame)"
# Frame rate of the overlay when the input has none (a folder of frames, CAMUS without its .cfg).
DEFAULT_OVERLAY_FPS = 25.0
OVERLAY_CODEC, OVERLAY_FALLBACK_CODEC = "libx264", "mpeg4"
# Overlay frames are enlarged by a whole factor to at least this many rows: contours are then drawn
# 2 pixels wide (`overlay_slice`), which keeps their colour through 4:2:0 chroma, and names are legible.
OVERLAY_MIN_ROWS = 512
# Ticks per second of the overlay's timestamps where the input times its frames: a multiple of the
# usual frame rates (24, 25, 30, 50, 60) within MPEG-4 Part 2's limit (65535) for the fallback codec.
OVERLAY_TIME_SCALE = 60_000

LabelWriter = Callable[[np.ndarray], None]  # takes the next (n, H, W) chunk of label maps
OverlayWriter = Callable[[int, np.ndarray, np.ndarray], None]  # first frame index, frames, label maps


def mask_sequence_kind(path: Path) -> str:
    """"npz", "nifti" or "folder" for a mask output path, or a one-line error for anything else."""
    suffix = file_suffix(path)
    if suffix == ".npz":
        return "npz"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if path.is_dir() or not path.suffix:
        check_mask_folder(path)
        return "folder"
    raise InputError(f"{path}: cannot write a video's masks as '{suffix}' (write {MASK_SEQUENCE_FORMATS})")


@contextmanager
def mask_sequence_writer(path: Path, video: Video, dtype: np.dtype) -> Iterator[LabelWriter]:
    """Yield a function taking label-map chunks (n, H, W) in frame order, all `video.num_frames` of
    them, written to `path` (`mask_sequence_kind`) with the video's frame rate and pixel spacing."""
    path = Path(path)
    writer = {"npz": _npz_writer, "nifti": _nifti_writer, "folder": _png_folder_writer}[mask_sequence_kind(path)]
    written = 0

    def write_counted(write: LabelWriter) -> LabelWriter:
        def write_chunk(labels: np.ndarray) -> None:
            nonlocal written
            write(np.ascontiguousarray(labels, dtype=dtype))
            written += len(labels)

        return write_chunk

    try:
        with writer(path, video, np.dtype(dtype)) as write:
            yield write_counted(write)
            if written != video.num_frames:
                raise ValueError(f"{written} frames of masks written to {path}, the video has {video.num_frames}")
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from error


@contextmanager
def _npz_writer(path: Path, video: Video, dtype: np.dtype) -> Iterator[LabelWriter]:
    # np.savez needs the whole array; its layout (a zip of .npy files) is written here piece by piece.
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": video.shape}
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("segs.npy", "w", force_zip64=True) as stream:
            np.lib.format.write_array_header_1_0(stream, header)
            yield lambda labels: stream.write(labels.tobytes())
        extras = {"frame_rate": video.frame_rate, "pixel_spacing": video.pixel_spacing, "frame_times": video.frame_times}
        for key, value in extras.items():
            if value is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(value, dtype=float))
                archive.writestr(f"{key}.npy", buffer.getvalue())


def nifti_header(video: Video, dtype: np.dtype) -> nib.Nifti1Header:
    """The header of the video's masks as NIfTI: the input's own when it was a NIfTI (same layout
    and affine, so the masks overlay it), else a 2D+t ``(x, y, 1, t)`` image with the pixel spacing
    and the frame interval in seconds."""
    template = video.meta.get("nifti_header")
    if template is not None:
        header = template.copy()
    else:
        sx, sy = video.pixel_spacing or (1.0, 1.0)
        step = 1.0 / video.frame_rate if video.frame_rate else 1.0
        header = nib.Nifti1Header()
        header.set_data_shape((video.frame_shape[1], video.frame_shape[0], 1, video.num_frames))
        header.set_zooms((sx, sy, 1.0, step))
        # "unknown" 1 x 1 pixels: no calibration, rather than 1 mm the video never said
        header.set_xyzt_units("mm" if video.pixel_spacing else "unknown", "sec" if video.frame_rate else "unknown")
        header.set_sform(np.diag([sx, sy, 1.0, 1.0]), code="scanner")
        header.set_qform(np.diag([sx, sy, 1.0, 1.0]), code="scanner")
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = header["cal_max"] = 0
    return header


@contextmanager
def _nifti_writer(path: Path, video: Video, dtype: np.dtype) -> Iterator[LabelWriter]:
    header = nifti_header(video, dtype)
    with atomic_path(path) as temporary, nib.openers.Opener(temporary, "wb") as stream:
        header.write_to(stream)
        stream.write(b"\0" * (header.get_data_offset() - stream.tell()))
        # NIfTI stores x fastest, then y, then t: a (H, W) frame's C-order bytes, frame after frame.
        yield lambda labels: stream.write(labels.tobytes())


def check_mask_folder(path: Path) -> None:
    """The PNG masks replace the whole folder they go to: it may be new, empty, or hold only PNGs
    (an earlier run's masks), never anything else a user would lose."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: a file is in the way of the PNG mask folder")
    others = sorted(entry.name for entry in path.iterdir() if entry.suffix.lower() != ".png") if path.is_dir() else []
    if others:
        raise InputError(
            f"{path}: the folder holds other files ({others[0]}{', ...' if len(others) > 1 else ''}), which writing "
            "the masks there would delete; choose a new folder"
        )


@contextmanager
def _png_folder_writer(path: Path, video: Video, dtype: np.dtype) -> Iterator[LabelWriter]:
    check_mask_folder(path)
    names = [Path(name).stem + ".png" for name in video.meta.get("frame_files", [])]
    if len(names) != video.num_frames:  # frames of a folder keep their names; others are numbered
        digits = max(5, len(str(video.num_frames - 1)))
        names = [f"frame_{index:0{digits}d}.png" for index in range(video.num_frames)]
    position = 0
    with atomic_folder(path) as staging:

        def write(labels: np.ndarray) -> None:
            nonlocal position
            for plane in labels:
                Image.fromarray(plane).save(staging / names[position])
                position += 1

        yield write


# -- overlay video -----------------------------------------------------------------------------------


def check_overlay_path(path: Path) -> None:
    if file_suffix(path) != ".mp4":
        raise InputError(f"{path}: a video's overlay is written as .mp4")


@contextmanager
def overlay_video_writer(path: Path, video: Video, names: Mapping[int, str | None]) -> Iterator[OverlayWriter]:
    """Yield a function drawing each object's contour and name, and the frame number and time, on
    chunks of frames, encoded as H.264 MP4 at the video's frame rate (`DEFAULT_OVERLAY_FPS` when
    unknown), enlarged to at least `OVERLAY_MIN_ROWS` rows."""
    path = Path(path)
    check_overlay_path(path)
    scale = -(-OVERLAY_MIN_ROWS // video.frame_shape[0])
    height, width = (size * scale for size in video.frame_shape)
    rate = video.frame_rate or DEFAULT_OVERLAY_FPS
    try:
        with atomic_path(path) as temporary, av.open(str(temporary), "w", format="mp4") as container:
            codec = OVERLAY_CODEC if OVERLAY_CODEC in av.codecs_available else OVERLAY_FALLBACK_CODEC
            stream = container.add_stream(codec, rate=frame_rate_fraction(rate))
            # 4:2:0 chroma needs even sizes: frames are padded by a row/column where needed.
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "20", "preset": "veryfast"} if codec == OVERLAY_CODEC else {"qscale": "3"}
            if video.frame_times is not None:  # each frame at its input's time: fine enough for any rate
                stream.codec_context.time_base = Fraction(1, OVERLAY_TIME_SCALE)

            def write(start: int, frames: np.ndarray, labels: np.ndarray) -> None:
                for offset, (frame, plane) in enumerate(zip(frames, labels)):
                    frame, plane = (np.repeat(np.repeat(a, scale, axis=0), scale, axis=1) for a in (frame, plane))
                    picture = _overlay_frame(frame, plane, start + offset, video.time_of(start + offset), names)
                    canvas = Image.new("RGB", (stream.width, stream.height))
                    canvas.paste(picture)
                    encoded = av.VideoFrame.from_image(canvas)
                    if video.frame_times is not None:  # shown when the input's frame is (a variable rate kept)
                        encoded.pts = round(video.frame_times[start + offset] * OVERLAY_TIME_SCALE)
                    for packet in stream.encode(encoded):
                        container.mux(packet)

            yield write
            for packet in stream.encode():
                container.mux(packet)
    except (av.FFmpegError, OSError) as error:
        raise InputError(f"{path}: cannot write the overlay video ({error})") from error


def _overlay_frame(
    frame: np.ndarray, labels: np.ndarray, index: int, seconds: float | None, names: Mapping[int, str | None]
) -> Image.Image:
    picture = overlay_slice(frame, labels)
    draw = ImageDraw.Draw(picture)
    caption = f"frame {index}" + (f"  {seconds:.2f} s" if seconds is not None else "")
    draw.text((4, 4), caption, fill=(255, 255, 0))
    for label in np.unique(labels):
        if label == 0:
            continue
        rows, cols = np.nonzero(labels == label)
        text = names.get(int(label)) or f"object {label}"
        colour = label_colour(label)
        draw.text((int(cols.min()), max(int(rows.min()) - 12, 0)), text, fill=colour)
    return picture


# -- per-frame tables and plots ----------------------------------------------------------------------


def write_table(path: Path, columns: Mapping[str, Sequence]) -> Path:
    """A CSV with one column per entry (all the same length), written atomically."""
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths {sorted(lengths)}")
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(columns)
    table.writerows(zip(*columns.values()))
    try:
        return atomic_write_text(path, buffer.getvalue())
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from error


def save_curve_plot(
    path: Path,
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    x_label: str,
    y_label: str,
    markers: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """A PNG line plot of `curves` over `x`; `markers` names groups of positions in `x` (such as the
    ED and ES frames) drawn as labelled vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4), dpi=120)
    try:
        for label, values in curves.items():
            axes.plot(x, values, label=label, linewidth=1.5)
        for (label, positions), style in zip((markers or {}).items(), ("--", ":", "-.")):
            for number, position in enumerate(positions):
                axes.axvline(x[position], color="grey", linestyle=style, linewidth=1, label=label if number == 0 else None)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from error
    finally:
        plt.close(figure)
    return Path(path)
