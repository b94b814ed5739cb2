"""`medsam2 segment`: one prompt on one slice, the object through the whole volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.engine.api import Result, segment_volume
from medsam2.engine.models import load_predictor
from medsam2.engine.prompt_files import load_prompt_file
from medsam2.engine.prompts import Prompt, recist_line_from_marker, recist_to_box
from medsam2.errors import InputError
from medsam2.io import load_image, save_mask
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.overlay import save_overlay_montage
from medsam2.io.volume import SliceAxis, Volume, slicing_axis_index, to_slices


def parse_numbers(text: str, flag: str, counts: tuple[int, ...]) -> list[float]:
    """Comma-separated numbers of one of the allowed counts, or a one-line error."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if len(values) not in counts:
        raise InputError(f"{flag} {text!r}: expected {' or '.join(map(str, counts))} numbers, got {len(values)}")
    return values


def as_index(value: float, flag: str, what: str) -> int:
    if value != int(value):
        raise InputError(f"{flag}: {what} must be a whole number, got {value}")
    return int(value)


def prompts_from_flags(
    boxes: list[str], points: list[str], recists: list[str], height: int, width: int
) -> list[Prompt]:
    prompts = []
    for text in boxes:
        z, x1, y1, x2, y2, *rest = parse_numbers(text, "--box", (5, 6))
        obj_id = as_index(rest[0], "--box", "object id") if rest else 1
        prompts.append(Prompt(as_index(z, "--box", "slice"), obj_id, box=(x1, y1, x2, y2)))
    for text in points:
        z, x, y, *rest = parse_numbers(text, "--point", (3, 4, 5))
        label = as_index(rest[0], "--point", "label") if rest else 1
        obj_id = as_index(rest[1], "--point", "object id") if len(rest) > 1 else 1
        prompts.append(Prompt(as_index(z, "--point", "slice"), obj_id, points=((x, y),), labels=(label,)))
    for text in recists:
        z, x1, y1, x2, y2, *rest = parse_numbers(text, "--recist", (5, 6))
        obj_id = as_index(rest[0], "--recist", "object id") if rest else 1
        prompts.append(Prompt(as_index(z, "--recist", "slice"), obj_id, box=recist_to_box((x1, y1, x2, y2), height, width)))
    return prompts


def prompts_from_mask(mask: Volume, image: Volume, axis_index: int) -> list[Prompt]:
    """Each label of a mask file becomes a mask prompt on the slice where that label is largest."""
    if mask.shape != image.shape:
        raise InputError(f"{mask.source}: mask shape {mask.shape} differs from image shape {image.shape}")
    slices = to_slices(mask.array, axis_index)
    prompts = []
    for label in (int(v) for v in np.unique(slices) if v != 0):
        areas = (slices == label).reshape(slices.shape[0], -1).sum(axis=1)
        index = int(np.argmax(areas))
        prompts.append(Prompt(index, label, mask=slices[index] == label))
    if not prompts:
        raise InputError(f"{mask.source}: the mask prompt is empty")
    return prompts


def prompt_boxes(result: Result) -> dict[int, tuple[float, float, float, float]]:
    return {p.slice_index: p.box for p in result.prompts if p.box is not None}


@reports_input_errors
def segment(
    image: Path = typer.Argument(..., help="Scan to segment (any format `medsam2 info` reads)."),
    output: Path = typer.Option(..., "-o", "--output", help="Label map to write: .nii.gz/.nii, .nrrd, .mha, .npz (key segs), .png (2D) or .dcm (DICOM-SEG, DICOM input)."),
    box: list[str] = typer.Option([], "--box", help="Box Z,X1,Y1,X2,Y2[,ID] on slice Z (pixels: X column, Y row). Repeat for anchors or objects."),
    point: list[str] = typer.Option([], "--point", help="Click Z,X,Y[,LABEL[,ID]]; LABEL 1 = object (default), 0 = background."),
    recist: list[str] = typer.Option([], "--recist", help="RECIST line Z,X1,Y1,X2,Y2[,ID]: its end points; becomes a square box as in MedSAM2."),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="JSON prompts with several named objects (see README)."),
    mask_prompt: Path | None = typer.Option(None, "--mask-prompt", help="Mask file in the image's geometry: each label is prompted on its largest slice."),
    window: str | None = typer.Option(None, "--window", help="CT window: a preset (soft_tissue, lung, bone, brain, liver, mediastinum) or W,L. Default: by modality."),
    axis: str = typer.Option("axial", "--axis", help="Slicing axis: axial, coronal or sagittal."),
    model: str = typer.Option("lite-medsam", "--model", help="lite-medsam (embedded) or a checkpoint path."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only the largest 3D connected component per object."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill holes in each slice's mask."),
    overlay: Path | None = typer.Option(None, "--overlay", help="Also write a PNG montage of the segmented slices with contours and boxes."),
) -> None:
    """Segment objects through IMAGE from prompts on one or a few slices; write the label map.

    Slices are taken along --axis; Z is the slice index along it, X,Y pixel column and row in that
    slice (as `medsam2 info` and most viewers count from 0). An npz with a `recist` marker and no
    other prompt is prompted from that marker.

    Example: medsam2 segment ct.nii.gz --box 42,120,88,160,131 -o lesion.nii.gz --overlay lesion.png
    """
    if axis not in ("axial", "coronal", "sagittal"):
        raise InputError(f"--axis {axis!r}: choose axial, coronal or sagittal")
    volume = load_image(image)
    axis_index = slicing_axis_index(volume, axis)  # type: ignore[arg-type]
    _, height, width = to_slices(np.empty(volume.shape, dtype=np.uint8), axis_index).shape
    prompts = prompts_from_flags(box, point, recist, height, width)
    if prompts_file is not None:
        prompts += load_prompt_file(prompts_file, height, width)
    if mask_prompt is not None:
        prompts += prompts_from_mask(load_mask(mask_prompt), volume, axis_index)
    marker = stored_array(volume, "recist")
    if not prompts and marker is not None:
        slice_index, line = recist_line_from_marker(to_slices(marker, axis_index))
        prompts.append(Prompt(slice_index, 1, box=recist_to_box(line, height, width)))
    if not prompts:
        raise InputError(f"{image}: no prompt given (use --box, --point, --recist, --prompts or --mask-prompt)")
    predictor = load_predictor(model, device=device)
    result = segment_volume(
        volume, prompts, predictor, axis=axis, window=window, keep_largest=keep_largest, fill_holes=fill_holes  # type: ignore[arg-type]
    )
    save_mask(result.labels.array, like=volume, path=output)
    typer.echo(f"wrote {output}")
    for obj_id, name in sorted(result.names.items()):
        voxels = int(np.count_nonzero(result.labels.array == obj_id))
        volume_ml = voxels * float(np.prod(volume.spacing)) / 1000
        typer.echo(f"object {obj_id}{f' ({name})' if name else ''}: {voxels} voxels, {volume_ml:.2f} mL")
    if overlay is not None:
        save_overlay_montage(result.slices, to_slices(result.labels.array, result.axis_index), overlay, boxes=prompt_boxes(result))
        typer.echo(f"wrote {overlay}")
