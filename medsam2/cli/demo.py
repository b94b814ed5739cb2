"""`medsam2 demo`: the main job end to end on a real scan, scored against its reference mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from medsam2.cli.errors import reports_input_errors
from medsam2.cli.models import MODEL_HELP, loaded_predictor
from medsam2.cli.segment import PRECISION_OPTION, write_result
from medsam2.engine.api import segment_volume
from medsam2.engine.models import check_precision
from medsam2.engine.prompt_sources import parse_numbers
from medsam2.engine.prompts import Prompt, box_from_mask, whole_number
from medsam2.errors import InputError
from medsam2.io import load_image
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.atomic import check_output_paths
from medsam2.io.paths import mask_file_stem
from medsam2.io.samples import mni152_brain
from medsam2.io.volume import Volume, slicing_axis_index, to_slices
from medsam2.metrics import evaluate


def reference_of(case: Path, volume: Volume, reference: Path | None) -> Volume | None:
    """The reference mask for a demo case: a given file, else the `gts` stored in an npz."""
    if reference is not None:
        return load_mask(reference, like=volume)
    stored = stored_array(volume, "gts")
    return None if stored is None else volume.with_array(stored)


def key_slice_box(reference: np.ndarray) -> Prompt:
    """The box of the reference mask on the slice where it is largest (the usual one-box prompt)."""
    areas = (reference > 0).reshape(reference.shape[0], -1).sum(axis=1)
    index = int(np.argmax(areas))
    return Prompt(index, 1, box=box_from_mask(reference[index] > 0))


@reports_input_errors
def demo(
    case: Path | None = typer.Option(None, "--case", help="Scan to segment instead of the packaged MNI152 brain (e.g. a CT lesion npz)."),
    box: str | None = typer.Option(None, "--box", help="Box Z,X1,Y1,X2,Y2 on axial slice Z. Default: the reference's box on its largest slice."),
    reference: Path | None = typer.Option(None, "--reference", help="Reference mask for the Dice score (npz cases use their `gts`)."),
    out: Path = typer.Option(Path("demo_output"), "--out", help="Folder for the mask and the overlay."),
    model: str = typer.Option("lite-medsam", "--model", help=MODEL_HELP),
    precision: str | None = PRECISION_OPTION,
) -> None:
    """Segment a real scan from one box, write the mask and an overlay, and print the Dice score.

    With no options: the MNI152 T1 brain template that nilearn ships, prompted with one box
    around the brain on its largest axial slice, scored against the template's grey + white
    matter maps.

    Example: medsam2 demo --case ../shared/data/ct_lesion/CT_Lesion_000002_03_01_035-047.npz
    """
    checked_precision = check_precision(precision)
    if case is None:
        volume, truth = mni152_brain()
        name = "mni152_brain"
    else:
        volume = load_image(case)
        truth = reference_of(case, volume, reference)
        name = mask_file_stem(case)
    if box is not None:
        z, x1, y1, x2, y2 = parse_numbers(box, "--box", (5,))
        prompt = Prompt(whole_number(z, "--box: slice"), 1, box=(x1, y1, x2, y2))
    elif truth is not None:
        if not truth.array.any():
            raise InputError(f"{reference or case}: the reference mask is empty; give --box")
        prompt = key_slice_box(to_slices(truth.array, slicing_axis_index(volume, "axial")))
    else:
        raise InputError(f"{case}: give --box or --reference (the case has no stored mask)")
    mask_path, overlay_path = out / f"{name}_mask.nii.gz", out / f"{name}_overlay.png"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file is there; the demo writes its mask and overlay into a folder")
    check_output_paths([case, reference], [mask_path, overlay_path])
    typer.echo(f"{name}: box {[round(v) for v in prompt.box]} on slice {prompt.slice_index} of {volume.shape[0]}")
    result = segment_volume(volume, [prompt], loaded_predictor(model, precision=checked_precision))
    write_result(result, volume, "axial", mask_path, overlay_path)
    typer.echo(f"wrote {mask_path} and {overlay_path}")
    if truth is not None:
        (scores,) = evaluate(result.labels.array > 0, truth.array > 0, spacing=volume.spacing, tolerance_mm=2.0)
        typer.echo(f"Dice {scores.dice:.3f}  NSD(2 mm) {scores.nsd:.3f}  against the reference")
