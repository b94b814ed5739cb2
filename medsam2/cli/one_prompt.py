"""`medsam2 one-prompt`: annotate one image, segment the same kind of structure in many others."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.cli.models import loaded_predictor
from medsam2.cli.segment import WINDOW_PRESETS_TEXT
from medsam2.distributed.manifest import AUTO_FORMAT
from medsam2.distributed.worker import mask_suffix
from medsam2.engine.api import prepare_slices
from medsam2.engine.memory_policy import ConfidenceBankConfig
from medsam2.engine.models import DEFAULT_MODEL, memory_banks
from medsam2.engine.one_prompt import (
    OnePromptConfig,
    OnePromptSegmenter,
    reference_mask_from_box,
)
from medsam2.engine.prompt_sources import parse_numbers, prompts_from_mask
from medsam2.engine.prompts import Prompt, whole_number
from medsam2.errors import InputError
from medsam2.io import load_image, save_mask
from medsam2.io.atomic import check_output_paths, outputs_together
from medsam2.io.dicom import is_dicom_file, separate_images
from medsam2.io.masks import load_mask
from medsam2.io.paths import image_suffix, list_image_files, mask_file_stem
from medsam2.io.volume import SliceAxis, from_slices, slicing_axis_index, to_slices
from medsam2.io.writers import check_mask_output
from medsam2.preprocess import parse_window
from medsam2.wording import counted

CSV_NAME = "one_prompt.csv"
CSV_COLUMNS = ("target", "slice", "confidence", "predicted_iou", "pixels", "mask")


@dataclass(frozen=True)
class TargetFile:
    path: Path
    output: Path


def target_files(paths: list[Path], out_dir: Path) -> list[TargetFile]:
    """Every target image with the mask file it gets. A folder of images other than DICOM, or of
    DICOM files that are each a series of their own, is a folder of targets (each file in it); any
    other folder is read as one DICOM series."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        inside = [file for file in list_image_files(path) if image_suffix(file) != ".dcm"] if path.is_dir() else []
        if inside and any(is_dicom_file(entry) for entry in path.iterdir()):
            raise InputError(f"{path}: holds both image files and DICOM files; give its DICOM series as a target of its own (in a folder of its own)")
        found += inside or (separate_images(path) if path.is_dir() else []) or [path]
    files, taken = [], {}
    for path in found:
        named = path.resolve() if path.is_dir() else path  # a series given as "." is named after its folder
        output = out_dir / (mask_file_stem(named) + mask_suffix(AUTO_FORMAT, path))
        if output in taken:
            raise InputError(f"{path}: its mask would overwrite that of {taken[output]} ({output}); rename one of them")
        taken[output] = path
        files.append(TargetFile(path, output))
    return files


def parse_slices(text: str, count: int | None = None, where: Path | None = None) -> list[int]:
    """"3-9,12" -> [3, ..., 9, 12], checked against the stack `where` of `count` slices (None: the
    syntax alone, checked before any target is read)."""
    if not text.strip():
        raise InputError("--slices '': name the slices to segment (e.g. 3-9,12), or leave the option out for all")
    chosen: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            # "5-" must not read as slice 5 alone: a range needs both its ends.
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise InputError(f"--slices {text!r}: expected ranges A-B and indices separated by commas") from None
        if first > last:
            raise InputError(f"--slices {text!r}: {part.strip()} runs backwards; write it {last}-{first}")
        if count is not None and last >= count:  # no part is negative: "-3" has no number before its dash
            raise InputError(f"--slices {text!r}: {part.strip()} is outside 0..{count - 1} of {where}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def reference_prompt(
    image_path: Path, mask_path: Path | None, box: str | None, label: int | None, axis: SliceAxis, window: str | None
) -> tuple[np.ndarray, Prompt]:
    """The reference's uint8 slices along `axis` and its prompt: the mask on the slice where the
    chosen label is largest, or the box on its slice."""
    if (mask_path is None) == (box is None):
        raise InputError("give exactly one of --reference-mask and --reference-box")
    volume = load_image(image_path)
    slices, axis_index = prepare_slices(volume, axis, window)
    if box is not None:
        if label is not None:
            raise InputError("--label chooses a label of --reference-mask; a --reference-box marks one structure already")
        z, x1, y1, x2, y2 = parse_numbers(box, "--reference-box", (5,))
        prompt = Prompt(whole_number(z, "--reference-box: slice"), 1, box=(x1, y1, x2, y2))
        prompt.validate(*slices.shape[:3], where=f"--reference-box {box!r} on {image_path}")  # no "object 1": none was named
        return slices, prompt
    prompts = {p.obj_id: p for p in prompts_from_mask(load_mask(mask_path, like=volume), volume, axis_index)}
    if label is None and len(prompts) > 1:
        raise InputError(f"{mask_path}: holds labels {', '.join(map(str, sorted(prompts)))}; choose one with --label")
    if label is not None and label not in prompts:
        raise InputError(f"{mask_path}: no label {label} (labels: {', '.join(map(str, sorted(prompts)))})")
    return slices, prompts[label if label is not None else next(iter(prompts))]


def check_family_options(ctx: typer.Context, model: str) -> None:
    """Refuse options given for the other model family, which it would silently ignore."""
    # typer's own click names where each value came from (COMMANDLINE, DEFAULT...)
    given = {name for name in ("refine", "bank_size", "bank_threshold") if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    memory_model = bool(memory_banks(model))  # builds no model
    if memory_model and "refine" in given:
        raise InputError("--refine/--no-refine: for LiteMedSAM; a SAM 2.1 / MedSAM2 model decodes each mask once, from its memory")
    if not memory_model and given & {"bank_size", "bank_threshold"}:
        raise InputError("--bank-size/--bank-threshold: for SAM 2.1 / MedSAM2 models; LiteMedSAM keeps no memory bank")


def check_targets(files: list[TargetFile], slices: str | None, axis: str) -> None:
    """What would stop the run at a later target, found before any is segmented: an unreadable
    image, --slices outside a 3D target, a mask its format cannot hold (a DICOM-SEG the image cannot
    have). Each target is read here and again when its turn comes, rather than all held at once."""
    three_d = 0
    for target in files:
        volume = load_image(target.path)
        check_mask_output(target.output, volume)
        depth = to_slices(np.empty(volume.shape, np.uint8), slicing_axis_index(volume, axis)).shape[0]  # type: ignore[arg-type]
        if slices and depth > 1:
            parse_slices(slices, depth, target.path)
            three_d += 1
    if slices and not three_d:
        typer.echo(f"warning: --slices {slices}: no target is 3D, so every target is segmented whole", err=True)


@reports_input_errors
def one_prompt(
    ctx: typer.Context,
    targets: list[Path] = typer.Argument(..., metavar="TARGETS", help="Images to segment: files, folders of image files (separate DICOM images too), or DICOM series folders. Every slice of a 3D image is a target of its own."),
    reference: Path = typer.Option(..., "--reference", help="The annotated example image (any format `medsam2 info` reads)."),
    reference_mask: Path | None = typer.Option(None, "--reference-mask", help="Mask of the structure on the reference, in its geometry; the slice where it is largest is used. An npz's gts array works."),
    reference_box: str | None = typer.Option(None, "--reference-box", help="Box Z,X1,Y1,X2,Y2 around the structure on reference slice Z, instead of a mask (the model segments inside it first)."),
    label: int | None = typer.Option(None, "--label", help="Which label of a multi-label reference mask is the structure."),
    output: Path = typer.Option(..., "-o", "--output", help=f"Output folder: one mask per target file, in its geometry and format (NIfTI where it cannot be written back), and {CSV_NAME}."),
    slices: str | None = typer.Option(None, "--slices", help="Segment only these slices of 3D targets, e.g. 3-9,12 (the rest stays empty)."),
    min_confidence: float = typer.Option(0.0, "--min-confidence", min=0.0, max=1.0, help="Leave the mask of a target slice (or 2D image) empty when its confidence is lower (0-1; see README)."),
    refine: bool = typer.Option(OnePromptConfig.refine, "--refine/--no-refine", help="LiteMedSAM: decode each mask once more from its own box grown by 10%."),
    bank_size: int = typer.Option(ConfidenceBankConfig.capacity, "--bank-size", min=1, help="SAM 2 / MedSAM2: confident predictions kept as memories (K)."),
    bank_threshold: float = typer.Option(ConfidenceBankConfig.min_confidence, "--bank-threshold", min=0.0, max=1.0, help="SAM 2 / MedSAM2: confidence (predicted IoU x object probability) a prediction needs to become a memory."),
    window: str | None = typer.Option(None, "--window", help=f"CT window for reference and targets: {WINDOW_PRESETS_TEXT}"),
    axis: str = typer.Option("axial", "--axis", help="Slicing axis: axial, coronal or sagittal."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="lite-medsam (embedded, prototype matching) or a SAM 2.1 / MedSAM2 preset or checkpoint (memory attention), as for `medsam2 segment`."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Segment in every TARGET the structure marked once on a reference image.

    The targets need no relation to the reference or to each other: other patients, other studies, slices in any order.

    With LiteMedSAM each target is matched against the reference on its own; with SAM 2.1 / MedSAM2 the reference is a memory that every target attends to, together with the most confident earlier results.

    Writes one mask per target file and one_prompt.csv with a confidence for every segmented slice.

    Example: medsam2 one-prompt --reference ct_a.nii.gz --reference-mask lesion_a.nii.gz ct_b.nii.gz scans/ -o out/
    """
    if axis not in ("axial", "coronal", "sagittal"):
        raise InputError(f"--axis {axis!r}: choose axial, coronal or sagittal")
    if window is not None:
        parse_window(window)
    if slices is not None:
        parse_slices(slices)
    config = OnePromptConfig(
        refine=refine,
        min_confidence=min_confidence,
        bank=ConfidenceBankConfig(capacity=bank_size, min_confidence=bank_threshold),
    )
    if image_suffix(output) is not None:
        raise InputError(f"-o {output}: the output is a folder (one mask per target in it), not an image file")
    check_family_options(ctx, model)
    ref_slices, prompt = reference_prompt(reference, reference_mask, reference_box, label, axis, window)  # type: ignore[arg-type]
    files = target_files(targets, output)
    check_output_paths(
        [reference, reference_mask, *(target.path for target in files)], [*(target.output for target in files), output / CSV_NAME]
    )
    check_targets(files, slices, axis)
    predictor = loaded_predictor(model, device=device)
    ref_image = ref_slices[prompt.slice_index]
    ref_mask = prompt.mask if prompt.mask is not None else reference_mask_from_box(ref_image, prompt.box, predictor)
    segmenter = OnePromptSegmenter(ref_image, ref_mask, predictor, config)
    rows, written = [], []
    # All masks and the table land together: a target that cannot be read leaves no partial result.
    with outputs_together([*(target.output for target in files), output / CSV_NAME]) as staged:
        for target, staged_output in zip(files, staged):
            volume = load_image(target.path)
            stack, axis_index = prepare_slices(volume, axis, window)  # type: ignore[arg-type]
            chosen = parse_slices(slices, len(stack), target.path) if slices and len(stack) > 1 else list(range(len(stack)))
            results = segmenter.segment([stack[i] for i in chosen], desc=target.path.name)
            labels = np.zeros(stack.shape[:3], dtype=np.uint8)
            for index, result in zip(chosen, results):
                labels[index] = result.mask
            save_mask(np.ascontiguousarray(from_slices(labels, axis_index)), like=volume, path=staged_output)
            rows += [
                (str(target.path), index, f"{r.confidence:.4f}", f"{r.predicted_iou:.4f}", int(r.mask.sum()), str(target.output))
                for index, r in zip(chosen, results)
            ]
            found = sum(1 for r in results if r.mask.any())
            written.append(f"wrote {target.output} (structure on {found} of {counted(len(results), 'slice')})")
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        staged[-1].write_text(table.getvalue())
    for line in [*written, f"wrote {output / CSV_NAME}"]:
        typer.echo(line)
