"""`medsam2 segment`: one prompt on one slice, the object through the whole volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.cli.models import MODEL_HELP, loaded_predictor
from medsam2.cli.video import VideoRequest, segment_video_command
from medsam2.engine.api import Result, segment_volume
from medsam2.engine.models import check_precision
from medsam2.engine.prompt_sources import PromptSources, check_objects_marked, gather_prompts
from medsam2.engine.prompts import Prompt
from medsam2.engine.sam2_predictor import memory_propagation
from medsam2.engine.session import check_direction, object_ids
from medsam2.engine.video import VideoConfig
from medsam2.errors import InputError
from medsam2.io import load_image, save_mask
from medsam2.io.atomic import check_output_paths, outputs_together
from medsam2.io.masks import load_mask
from medsam2.io.overlay import check_overlay_output, save_overlay_montage
from medsam2.io.writers import check_mask_name, check_mask_output
from medsam2.io.video import is_video
from medsam2.io.volume import SliceAxis, Volume, slice_display, slice_pixel_spacing, to_slices
from medsam2.preprocess import WINDOW_PRESETS
from medsam2.wording import counted


# Shared by the commands that load a model (one definition, one help text).
WINDOW_PRESETS_TEXT = f"a preset ({', '.join(WINDOW_PRESETS)}) or W,L. Default: by modality."
PRECISION_OPTION = typer.Option(
    None,
    "--precision",
    help="fp32 or bf16. bf16 runs LiteMedSAM's encoder and box decoder in bfloat16, about 1.6x "
    "faster than fp32 on a CPU with native bf16 "
    "(AVX512-BF16/AMX; elsewhere fp32 is used, with a warning), masks not bit-exact (see README). "
    "Default: fp32 for lite-medsam, bf16 on CUDA (fp32 on CPU) for SAM 2.1 / MedSAM2.",
)


def write_result(result: Result, volume: Volume, axis: SliceAxis, mask_path: Path, overlay_path: Path | None) -> None:
    """The label map in `volume`'s geometry and, when asked, a montage of the slices the model saw
    with the masks and prompt boxes, turned as radiologists look at them; the two land together."""
    with outputs_together([mask_path, overlay_path]) as (mask_target, overlay_target):
        save_mask(result.labels.array, like=volume, path=mask_target, names=result.names)
        if overlay_target is not None:
            save_overlay_montage(
                result.slices,
                to_slices(result.labels.array, result.axis_index),
                overlay_target,
                boxes=prompt_boxes(result),
                display=slice_display(volume, axis),
                pixel_spacing=slice_pixel_spacing(volume, result.axis_index),
            )


def check_labels_to_edit(edit: Path, labels: np.ndarray, prompts: list[Prompt]) -> None:
    """A one-line error for a label map that cannot be corrected (empty, an id out of range), found
    before the model loads; a warning for prompts of objects it does not hold: they add objects,
    which a higher label in the map hides where they meet (an ID left out means object 1)."""
    try:
        held = object_ids(labels)
    except InputError as error:
        raise InputError(f"{edit}: {error}") from None
    for obj_id in sorted({prompt.obj_id for prompt in prompts} - set(held)):
        typer.echo(
            f"warning: --edit {edit.name} holds label(s) {', '.join(map(str, held[:10]))}{'...' if len(held) > 10 else ''}, "
            f"not {obj_id}: the prompts of object {obj_id} add it (to correct a label, give its ID: --box Z,X1,Y1,X2,Y2,ID)",
            err=True,
        )


def prompt_boxes(result: Result) -> dict[int, tuple[float, float, float, float]]:
    return {p.slice_index: p.box for p in result.prompts if p.box is not None}


@reports_input_errors
def segment(
    image: Path = typer.Argument(..., metavar="IMAGE", help="Scan to segment (any format `medsam2 info` reads), or a video: MP4/AVI/MOV..., a folder of PNG/JPEG frames, a cine DICOM, a NIfTI 2D+t."),
    output: Path = typer.Option(..., "-o", "--output", help="Label map to write: .nii.gz/.nii, .nrrd/.nhdr, .mha/.mhd, .npz (key segs), .png (2D) or .dcm (DICOM-SEG, DICOM input). For a video: .npz, .nii.gz (2D+t) or a folder (one PNG per frame)."),
    box: list[str] = typer.Option([], "--box", "--frame-box", help="Box Z,X1,Y1,X2,Y2[,ID] on slice Z, or on frame T of a video (pixels: X column, Y row). Repeat for anchors or objects."),
    point: list[str] = typer.Option([], "--point", "--frame-point", help="Click Z,X,Y[,LABEL[,ID]] (T,X,Y... on a video frame); LABEL 1 = object (default), 0 = background."),
    recist: list[str] = typer.Option([], "--recist", help="RECIST line Z,X1,Y1,X2,Y2[,ID]: its end points; becomes a square box as in MedSAM2."),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="JSON prompts with several named objects (see README)."),
    mask_prompt: Path | None = typer.Option(None, "--mask-prompt", help="Mask file in the image's geometry: each label is prompted on its largest slice (frame). Video: also T:FILE, one frame's labels."),
    erase: list[str] = typer.Option([], "--erase", help="Z[,ID]: object ID (default 1) is not on slice Z: it is taken off there and propagation stops there (where a lesion ends, or on a slice it leaked onto; with --edit, clears that slice of the label map). Scans only."),
    edit: Path | None = typer.Option(None, "--edit", help="Correct this label map (an earlier result, another tool's) instead of starting empty: its masks are kept on every slice, the prompts redo the slices they are on, and past an object's first or last slice propagation goes on from there. Not for videos."),
    window: str | None = typer.Option(None, "--window", help=f"CT window: {WINDOW_PRESETS_TEXT}"),
    axis: str = typer.Option("axial", "--axis", help="Slicing axis: axial, coronal or sagittal."),
    direction: str = typer.Option("both", "--direction", help="Propagate both ways from the prompted slices (both), or only towards higher slice indices (forward) or lower (backward): e.g. a prompt on a lesion's first slice, forward. Not for videos."),
    model: str = typer.Option("lite-medsam", "--model", help=MODEL_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: str | None = PRECISION_OPTION,
    memory: str = typer.Option("recent", "--memory", help="SAM 2.1 / MedSAM2: the memory bank each slice (frame) attends to: recent (SAM 2's: the ones just before) or confidence (the most confident earlier ones, weighted by image similarity; see README)."),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only the largest 3D connected component per object (video: per frame)."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill holes in each slice's mask."),
    overlay: Path | None = typer.Option(None, "--overlay", help="Also write a PNG montage of the segmented slices with contours and boxes (video: an .mp4 of every frame with contours and names)."),
    areas: Path | None = typer.Option(None, "--areas", help="Video: write each object's area per frame (pixels, mm² with pixel spacing) as CSV, and a PNG plot beside it."),
    echo: bool = typer.Option(False, "--echo", help="Video: object 1 is the LV cavity; print ED/ES frames, Simpson volumes and EF (and add them to --areas). See README."),
) -> None:
    """Segment objects through IMAGE from prompts on one or a few slices; write the label map.

    Slices are taken along --axis; Z is the slice index along it, X,Y pixel column and row in that
    slice (as `medsam2 info` and most viewers count from 0). An npz with a `recist` marker and no
    other prompt is prompted from that marker.

    Example: medsam2 segment ct.nii.gz --box 42,120,88,160,131 -o lesion.nii.gz --overlay lesion.png

    A video is segmented forward and backward from its prompted frames; T is the frame index.

    Example: medsam2 segment echo.mp4 --frame-box 12,80,60,150,170 -o lv.nii.gz --overlay lv.mp4 --areas lv.csv --echo
    """
    check_direction(direction, "--direction")
    propagation = memory_propagation(memory)
    checked_precision = check_precision(precision)
    if edit is not None and is_video(image) and Path(image).exists():
        raise InputError(f"{image}: --edit corrects a scan's label map; a video's masks are corrected in the web app (medsam2 serve)")
    if is_video(image):
        if axis != "axial":
            raise InputError(f"--axis {axis}: a video has no slicing axis (its frames are segmented as they are)")
        if direction != "both":
            raise InputError(f"--direction {direction}: a video is segmented forward and backward from its prompted frames")
        if erase:
            raise InputError(f"--erase {erase[0]}: a video's masks are corrected in the web app (medsam2 serve)")
        request = VideoRequest(
            image, output, boxes=tuple(box), points=tuple(point), recists=tuple(recist), prompts_file=prompts_file,
            mask_prompt=None if mask_prompt is None else str(mask_prompt), overlay=overlay, areas=areas, echo=echo,
            model=model, device=device, precision=checked_precision, config=VideoConfig(keep_largest=keep_largest, fill_holes=fill_holes, window=window, propagation=propagation),
        )
        return segment_video_command(request)
    if areas is not None or echo:
        raise InputError(f"{image}: --areas and --echo are for videos")
    if axis not in ("axial", "coronal", "sagittal"):
        raise InputError(f"--axis {axis!r}: choose axial, coronal or sagittal")
    if overlay is not None:
        check_overlay_output(overlay)
    check_mask_name(output, None)
    check_output_paths([image, prompts_file, mask_prompt, edit], [output, overlay])
    volume = load_image(image)
    if axis != "axial" and volume.shape[0] == 1:
        raise InputError(f"--axis {axis}: {image} is one 2D image, segmented in its own plane (leave --axis out)")
    check_mask_output(output, volume)
    sources = PromptSources(tuple(box), tuple(point), tuple(recist), prompts_file, mask_prompt, tuple(erase))
    prompts = gather_prompts(volume, axis, sources)  # type: ignore[arg-type]
    start = None
    if edit is None:  # nothing to correct: each object needs something on it
        check_objects_marked(prompts)
    else:
        start = load_mask(edit, like=volume)
        check_labels_to_edit(edit, start.array, prompts)
    predictor = loaded_predictor(model, device=device, precision=checked_precision)
    result = segment_volume(
        volume, prompts, predictor, axis=axis, window=window, config=propagation, keep_largest=keep_largest, fill_holes=fill_holes,  # type: ignore[arg-type]
        start=start, direction=direction,  # type: ignore[arg-type]
    )
    write_result(result, volume, axis, output, overlay)  # type: ignore[arg-type]
    typer.echo(f"wrote {output}" + ("" if overlay is None else f" and {overlay}"))
    for obj_id, name in sorted(result.names.items()):
        voxels = int(np.count_nonzero(result.labels.array == obj_id))
        if volume.has_spacing and volume.shape[0] == 1:  # a slice's third spacing is no thickness
            size = f"{counted(voxels, 'pixel')}, {voxels * volume.spacing[0] * volume.spacing[1]:.1f} mm²"
        elif volume.has_spacing:
            size = f"{counted(voxels, 'voxel')}, {voxels * float(np.prod(volume.spacing)) / 1000:.2f} mL"
        else:
            size = f"{counted(voxels, 'pixel' if volume.shape[0] == 1 else 'voxel')} (the image file gives no spacing: no size in mL)"
        typer.echo(f"object {obj_id}{f' ({name})' if name else ''}: {size}")
