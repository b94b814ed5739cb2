"""File-name rules shared by the readers and the commands that walk folders."""

from __future__ import annotations

import re
from pathlib import Path

# 2D pictures: images, or the frames of a video when a folder holds them.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Longest first, so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".npz", *PICTURE_SUFFIXES)
# Containers read as videos (through FFmpeg); folders of frames, cine DICOM and 2D+t NIfTI are
# recognised by their content (`medsam2.io.video.is_video`).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")


def natural_key(name: str) -> list:
    """Sort key putting frame_2 before frame_10: runs of digits compare as numbers, the rest ignoring case."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def image_suffix(path: Path) -> str | None:
    """The recognised image suffix of `path` (lower case), or None."""
    name = path.name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), None)


def mask_file_stem(path: Path) -> str:
    """The file name without its image or video suffix: "case_01.nii.gz" -> "case_01", "echo.mp4"
    -> "echo". A name with none (a series folder, a DICOM file named by its UID) is kept whole: its
    dots are not a suffix's."""
    name = path.name.lower()
    suffix = image_suffix(path) or next((video for video in VIDEO_SUFFIXES if name.endswith(video)), None)
    return path.name[: -len(suffix)] if suffix else path.name


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p)
    )


def file_identity(path: Path) -> str | None:
    """Size and modification time of a file, or of a folder's files (a DICOM series: their total
    size, the newest time): what a record notices a file's change by without reading it. None
    where it cannot be read."""
    try:
        stats = [path.stat()] if path.is_file() else [entry.stat() for entry in path.iterdir() if entry.is_file()]
    except OSError:
        return None
    return f"{sum(stat.st_size for stat in stats)} bytes, modified {max((stat.st_mtime_ns for stat in stats), default=0)}"
