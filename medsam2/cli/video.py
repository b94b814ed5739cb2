"""`medsam2 segment VIDEO ...`: the video path of the segment command (`medsam2.cli.segment` detects a
video input and hands it here).

Writes the per-frame masks, and on request an overlay MP4, a CSV and PNG plot of each object's area
per frame and, with --echo, the ED/ES frames, Simpson volumes and EF of object 1 (the LV cavity).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import typer
from tqdm.auto import tqdm

from medsam2.cli.models import loaded_predictor
from medsam2.engine.prompt_sources import (
    VIDEO_FLAGS,
    PromptSources,
    check_objects_marked,
    check_one_region_each,
    prompts_from_mask,
    written_prompts,
)
from medsam2.engine.prompts import Prompt
from medsam2.engine.sam2_predictor import Precision
from medsam2.engine.video import (
    VideoConfig,
    VideoSegmentation,
    check_prompt_frames,
    segment_video,
)
from medsam2.errors import InputError
from medsam2.io.atomic import check_output_paths, outputs_together
from medsam2.io.video import Video, load_video, load_video_mask
from medsam2.io.video_writers import (
    check_overlay_path,
    mask_sequence_kind,
    mask_sequence_writer,
    overlay_video_writer,
    save_curve_plot,
    write_table,
)
from medsam2.io.volume import Volume
from medsam2.measure.echo import EchoMeasurement, measure_echo, simpson_volume
from medsam2.progress import leave_finished_bar

LV_OBJECT = 1  # --echo measures object 1 as the left-ventricle cavity


@dataclass(frozen=True)
class VideoRequest:
    """What `medsam2 segment` was asked to do with a video."""

    video_path: Path
    output: Path
    boxes: tuple[str, ...] = ()
    points: tuple[str, ...] = ()
    recists: tuple[str, ...] = ()
    prompts_file: Path | None = None
    mask_prompt: str | None = None  # FILE (T, H, W) or FRAME:FILE (one frame's labels)
    overlay: Path | None = None
    areas: Path | None = None
    echo: bool = False
    model: str = "lite-medsam"
    device: str = "cpu"
    precision: Precision | None = None
    config: VideoConfig = field(default_factory=VideoConfig)

    def inputs(self) -> list[Path | None]:
        mask_file = None if self.mask_prompt is None else mask_prompt_file(self.mask_prompt)[1]
        return [self.video_path, self.prompts_file, mask_file]

    def outputs(self) -> list[Path | None]:
        """Every file written, the area plot beside the table included."""
        return [self.output, self.overlay, self.areas, self.areas.with_suffix(".png") if self.areas else None]


def check_outputs(request: VideoRequest) -> None:
    """Refuse unwritable output kinds and places before any work."""
    folders = [request.output] if mask_sequence_kind(request.output) == "folder" else []
    check_output_paths(request.inputs(), request.outputs(), folders=folders)
    if request.overlay is not None:
        check_overlay_path(request.overlay)
    if request.areas is not None and request.areas.suffix.lower() != ".csv":
        raise InputError(f"--areas {request.areas}: the table is written as .csv (its plot beside it as .png)")


def video_prompts(video: Video, request: VideoRequest) -> list[Prompt]:
    """Prompts from the flags, a prompts file and a mask prompt, frame index as slice index."""
    sources = PromptSources(request.boxes, request.points, request.recists, request.prompts_file)
    prompts = written_prompts(sources, *video.frame_shape, VIDEO_FLAGS)
    if request.mask_prompt is not None:
        prompts += mask_prompts(request.mask_prompt, video)
    if not prompts:
        raise InputError(f"{video.name}: no prompt given ({VIDEO_FLAGS.all_sources})")
    return check_objects_marked(check_one_region_each(prompts, "frame"), "frame")


def mask_prompt_file(spec: str) -> tuple[int | None, Path]:
    """The frame (None for a whole sequence) and the file of a --mask-prompt ``FILE`` or ``FRAME:FILE``."""
    frame_text, separator, file_text = spec.partition(":")
    if separator and frame_text.strip().isdigit() and not Path(spec).exists():
        return int(frame_text), Path(file_text)
    return None, Path(spec)


def mask_prompts(spec: str, video: Video) -> list[Prompt]:
    """``FILE``: a (T, H, W) label sequence, each label prompted on the frame where it is largest;
    ``FRAME:FILE``: one frame's label map (a PNG, say), each label prompted on that frame."""
    frame, path = mask_prompt_file(spec)
    one_frame = frame is not None
    labels = load_video_mask(path)
    if one_frame and len(labels) > 1:
        raise InputError(
            f"--mask-prompt {spec}: {path} holds {len(labels)} frames, not one frame's labels "
            f"(give --mask-prompt {path} for a sequence: each label on the frame where it is largest)"
        )
    shape, wanted = (labels.shape[1:], video.frame_shape) if one_frame else (labels.shape, video.shape)
    if shape != wanted:
        one_frame_hint = f" (one frame's labels go with the frame they are on: --mask-prompt T:{path})" if not one_frame and shape[1:] == wanted[1:] and shape[0] == 1 else ""
        raise InputError(f"{path}: a mask of shape {shape} does not fit the video's {'frames' if one_frame else '(T, H, W)'} {wanted}{one_frame_hint}")
    mask = Volume(array=labels, source=path)
    prompts = prompts_from_mask(mask, mask, 0)
    return [replace(prompt, slice_index=frame) for prompt in prompts] if one_frame else prompts


def segment_video_command(request: VideoRequest) -> None:
    check_outputs(request)
    with load_video(request.video_path) as video:
        prompts = video_prompts(video, request)
        check_prompt_frames(video, prompts)
        if request.echo and LV_OBJECT not in {prompt.obj_id for prompt in prompts}:
            raise InputError(f"--echo measures object {LV_OBJECT} (the left-ventricle cavity), which has no prompt")
        predictor = loaded_predictor(request.model, device=request.device, precision=request.precision)
        describe(video)
        with segment_video(video, prompts, predictor, request.config) as segmentation:
            write_outputs(segmentation, request)


def describe(video: Video) -> None:
    rate = f"{video.frame_rate:.2f} fps" if video.frame_rate else "frame rate unknown"
    spacing = f"{video.pixel_spacing[0]:.4g} x {video.pixel_spacing[1]:.4g} mm pixels" if video.pixel_spacing else "pixel spacing unknown"
    colour = "colour" if video.is_color else "grey"
    typer.echo(f"{video.name}: {video.num_frames} {colour} frames of {video.frame_shape[1]}x{video.frame_shape[0]}, {rate}, {spacing}")


def write_outputs(segmentation: VideoSegmentation, request: VideoRequest) -> None:
    """One pass over the frames feeding every writer; everything appears at once at the end."""
    video = segmentation.video
    ids = segmentation.object_ids
    areas = {obj_id: np.zeros(video.num_frames, dtype=np.int64) for obj_id in ids}
    with ExitStack() as outputs:
        mask_target, overlay_target, areas_target = outputs.enter_context(
            outputs_together([request.output, request.overlay, request.areas])
        )
        write_masks = outputs.enter_context(mask_sequence_writer(mask_target, video, segmentation.label_dtype))
        write_overlay = None
        if overlay_target is not None:
            write_overlay = outputs.enter_context(overlay_video_writer(overlay_target, video, segmentation.names))
        bar = outputs.enter_context(tqdm(total=video.num_frames, desc="writing", unit="frame", leave=leave_finished_bar()))
        for start, frames, labels in segmentation.chunks():
            write_masks(labels)
            if write_overlay is not None:
                write_overlay(start, frames, labels)
            for obj_id in ids:
                areas[obj_id][start : start + len(labels)] = np.count_nonzero(labels == obj_id, axis=(1, 2))
            bar.update(len(labels))
        bar.close()  # before measure's warning: on a log (no terminal) it followed the bar on its line
        echo = measure(segmentation, areas[LV_OBJECT]) if request.echo else None
        if areas_target is not None:
            write_area_outputs(areas_target, segmentation, areas, echo)
    report(segmentation, request, areas, echo)


def measure(segmentation: VideoSegmentation, lv_area: np.ndarray) -> EchoMeasurement | None:
    """The echo measurement of object 1, or None with a warning when its area curve gives none (the
    masks and other outputs are still written)."""

    def volume_at(frame: int) -> float:
        return simpson_volume(segmentation.labels(frame, frame + 1)[0] == LV_OBJECT, segmentation.video.pixel_spacing)

    try:
        return measure_echo(lv_area, volume_at)
    except InputError as error:
        typer.echo(f"warning: --echo: {error}", err=True)
        return None


def volume_unit(video: Video) -> tuple[float, str]:
    """Scale and unit of Simpson volumes: mm^3 to mL with a pixel spacing, cubic pixels without."""
    return (1e-3, "mL") if video.pixel_spacing else (1.0, "px3")


def write_area_outputs(
    path: Path,
    segmentation: VideoSegmentation,
    areas: dict[int, np.ndarray],
    echo: EchoMeasurement | None,
) -> None:
    video = segmentation.video
    frames = np.arange(video.num_frames)
    pixel_area = float(np.prod(video.pixel_spacing)) if video.pixel_spacing else None
    columns: dict[str, list] = {"frame": frames.tolist()}
    if video.time_of(0) is not None:
        columns["time_s"] = [round(video.time_of(frame), 4) for frame in frames]
    for obj_id, area in areas.items():
        columns[f"area_px_{obj_id}"] = area.tolist()
        if pixel_area is not None:
            columns[f"area_mm2_{obj_id}"] = [round(value * pixel_area, 3) for value in area]
    if echo is not None:
        scale, unit = volume_unit(video)
        phases = {**{frame: "ED" for frame in echo.ed_frames}, **{frame: "ES" for frame in echo.es_frames}}
        columns["phase"] = [phases.get(frame, "") for frame in frames]
        columns[f"lv_volume_{unit.lower()}"] = [round(echo.volumes[frame] * scale, 3) if frame in phases else "" for frame in frames]
    write_table(path, columns)
    x, x_label = (np.array([video.time_of(f) for f in frames]), "time (s)") if video.time_of(0) is not None else (frames, "frame")
    curves = {
        segmentation.names.get(obj_id) or f"object {obj_id}": area * (pixel_area or 1.0) for obj_id, area in areas.items()
    }
    markers = {"ED": echo.ed_frames, "ES": echo.es_frames} if echo else None
    plot = path.with_suffix(".png")
    save_curve_plot(plot, x, curves, x_label=x_label, y_label="area (mm²)" if pixel_area else "area (pixels)", markers=markers)


def report(
    segmentation: VideoSegmentation, request: VideoRequest, areas: dict[int, np.ndarray], echo: EchoMeasurement | None
) -> None:
    video = segmentation.video
    for path in request.outputs():
        if path is not None:
            typer.echo(f"wrote {path}")
    pixel_area = float(np.prod(video.pixel_spacing)) if video.pixel_spacing else None
    for obj_id, area in areas.items():
        name = segmentation.names.get(obj_id)
        present = area > 0
        mean = float(area[present].mean()) if present.any() else 0.0
        size = f"{mean * pixel_area:.1f} mm²" if pixel_area else f"{mean:.0f} pixels"
        typer.echo(f"object {obj_id}{f' ({name})' if name else ''}: on {int(present.sum())} of {video.num_frames} frames, mean area {size}")
    if echo is not None:
        scale, unit = volume_unit(video)
        typer.echo(f"echo (object {LV_OBJECT} = LV cavity, single-plane method of disks): ED frames {echo.ed_frames}, ES frames {echo.es_frames}")
        for beat in echo.beats:
            typer.echo(
                f"  beat ED {beat.ed_frame} -> ES {beat.es_frame}: EDV {beat.edv * scale:.4g} {unit}, "
                f"ESV {beat.esv * scale:.4g} {unit}, EF {beat.ejection_fraction:.1f} %"
            )
        typer.echo(f"EF {echo.ejection_fraction:.1f} % (mean of {len(echo.beats)} beat{'s' if len(echo.beats) > 1 else ''})")
