"""`medsam2 info`: what a scan or mask file is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.engine.registry import describe_checkpoint
from medsam2.io import Volume, load_image
from medsam2.io.dicom import is_segmentation, read_header, tracked_object
from medsam2.io.masks import NPZ_MASK_KEYS, states_geometry, stored_array
from medsam2.io.readers import file_suffix, is_picture_file
from medsam2.io.video import Video, is_video, load_video
from medsam2.io.volume import orientation_code
from medsam2.preprocess import guess_modality

CHECKPOINT_SUFFIXES = (".pt", ".pth")
# A file whose values are few non-negative integers is shown as a label map.
MAX_LABELS_FOR_MASK = 64


def mask_labels(volume: Volume) -> list[int] | None:
    """The non-zero labels if the volume looks like a label map, else None (a colour picture's
    channel values are no labels)."""
    if volume.is_color or (not np.issubdtype(volume.array.dtype, np.integer) and volume.array.dtype != bool):
        return None
    values = np.unique(volume.array)
    if values.size > MAX_LABELS_FOR_MASK or values.min() < 0:
        return None
    return [int(v) for v in values if v != 0]


def describe(volume: Volume, stored: Volume | None = None) -> dict:
    """The facts `medsam2 info` prints, as a JSON-ready dict. `stored`: a picture's values as masks
    read them (a palette PNG's indices, a 1-bit PNG's 0/1), where its labels are listed from."""
    array = volume.array
    placed = states_geometry(volume)  # a picture, or an npz without geometry, is placed nowhere in a patient
    facts = {
        "file": str(volume.source) if volume.source else None,
        "shape_zyx": list(volume.shape),
        "channels": int(array.shape[3]) if volume.is_color else 1,
        "dtype": str(array.dtype),
        "spacing_xyz_mm": [round(float(s), 6) for s in volume.spacing] if volume.has_spacing else None,
        "origin_xyz_mm": [round(float(o), 4) for o in volume.origin] if placed else None,
        "orientation": orientation_code(volume) if placed else None,
        "direction": [round(float(d), 6) for d in volume.direction] if placed else None,
        "intensity_min": float(array.min()),
        "intensity_max": float(array.max()),
        "modality": guess_modality(volume),
    }
    # An npz's mask (gts, segs) beside its image is what its labels are.
    npz_mask = next(((key, mask) for key in NPZ_MASK_KEYS if (mask := stored_array(volume, key)) is not None), None)
    if npz_mask:
        key, labelled = f"labels ({npz_mask[0]})", volume.with_array(npz_mask[1])
    elif stored is not None and stored.is_color != volume.is_color:
        key, labelled = "labels (palette indices)", stored
    else:
        key, labelled = "labels", stored if stored is not None else volume
    labels = mask_labels(labelled)
    if labels is not None:
        facts[key] = {str(label): int(np.count_nonzero(labelled.array == label)) for label in labels}
    return facts


def describe_segmentation(path: Path) -> dict:
    """The facts of a DICOM-SEG: its segments and the series it segments (its voxels are read
    against that series, by `segment --mask-prompt/--edit` and `eval --image`)."""
    dataset = read_header(path)
    referenced = dataset.get("ReferencedSeriesSequence") or [{}]
    return {
        "file": str(path),
        "kind": "DICOM-SEG (read against the series it segments)",
        "segments": {str(tracked_object(s)): str(s.get("SegmentLabel", "")) for s in dataset.get("SegmentSequence", [])},  # by object id
        "frames": int(dataset.get("NumberOfFrames") or 1),  # absent: one frame (the attribute is Type 1, yet files omit it)
        "frame_shape_yx": [int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)],
        "segments_series": str(referenced[0].get("SeriesInstanceUID", "")) or None,
    }


def describe_video(video: Video) -> dict:
    """The facts of a video (what `medsam2 segment` segments frame by frame)."""
    return {
        "file": str(video.source) if video.source else None,
        "kind": "video",
        "frames": video.num_frames,
        "frame_shape_yx": list(video.frame_shape),
        "channels": 3 if video.is_color else 1,
        "frame_rate_fps": round(video.frame_rate, 4) if video.frame_rate else None,
        "pixel_spacing_xy_mm": [round(float(s), 6) for s in video.pixel_spacing] if video.pixel_spacing else None,
        "modality": video.modality,
    }


@reports_input_errors
def info(
    image: Path = typer.Argument(..., metavar="IMAGE", help="Scan or mask: NIfTI, NRRD, MHA/MHD, DICOM file or folder, DICOM-SEG, npz, PNG/JPEG/TIFF/BMP; a video; or a model checkpoint (.pt, .pth)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
) -> None:
    """Show what IMAGE is: its geometry, intensities and labels, or a video's frames.

    A scan or mask: shape, spacing, orientation, intensities, modality guess, labels. A video (as
    `medsam2 segment` reads it): frames, frame size, frame rate, pixel spacing. A checkpoint: its
    model family and variant, and how `--model FILE` runs it.

    Example: medsam2 info scan.nii.gz
    """
    if file_suffix(image) in CHECKPOINT_SUFFIXES:
        facts = describe_checkpoint(image)
    elif is_video(image):
        with load_video(image) as video:
            facts = describe_video(video)
    elif is_segmentation(image):
        facts = describe_segmentation(image)
    else:
        volume = load_image(image, npz_array_keys=("imgs", *NPZ_MASK_KEYS))  # a mask npz too
        facts = describe(volume, load_image(image, picture_values=True) if is_picture_file(image) else None)
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    width = max(16, *map(len, facts))
    for key, value in facts.items():
        typer.echo(f"{key:>{width}}: {'unknown' if value is None else value}")
