"""`medsam2 eval`: score predicted masks against ground truth (DSC, NSD, HD95)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from medsam2.cli.console import StdoutConsole
from medsam2.cli.errors import reports_input_errors
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry, load_image
from medsam2.io.volume import in_storage_order_of
from medsam2.io.dicom import is_segmentation
from medsam2.io.masks import load_mask, states_geometry, unstated_geometry_from
from medsam2.io.paths import list_image_files, mask_file_stem
from medsam2.io.video import is_video_mask, load_video_mask, video_mask_pixel_spacing
from medsam2.io.atomic import check_output_paths, outputs_together
from medsam2.metrics import LabelScores
from medsam2.metrics import evaluate as evaluate_masks
from medsam2.metrics import evaluate_frames
from medsam2.wording import counted


@dataclass(frozen=True)
class CaseScores:
    """The scores of one case, for the labels that either of its masks holds."""

    name: str
    scores: list[LabelScores]
    missing_prediction: bool = False
    in_pixels: bool = False  # the ground truth gives no spacing: distances are in pixels, not mm
    video: bool = False  # scored frame by frame (`evaluate_frames`)


def score_pair(pred_path: Path, gt_path: Path, tolerance_mm: float, image: Volume | None = None) -> CaseScores:
    """`image`: the scan both masks belong to, which DICOM-SEG masks are read against."""
    if is_video_mask(pred_path) or is_video_mask(gt_path):
        return score_video_pair(pred_path, gt_path, tolerance_mm)
    pred, gt = placed_by_each_other(load_mask(pred_path, like=image), load_mask(gt_path, like=image))
    # what one npz leaves out of its geometry (a MedSAM npz gives only spacing) is the other's
    pred = unstated_geometry_from(pred, gt)
    gt = unstated_geometry_from(gt, pred)
    gt = in_storage_order_of(gt, pred)  # the same grid stored in another order, maybe
    check_same_geometry(pred, gt, what=f"prediction {pred_path.name} and ground truth {gt_path.name}")
    scores = evaluate_masks(pred.array, gt.array, spacing=gt.spacing, tolerance_mm=tolerance_mm)
    return CaseScores(mask_file_stem(gt_path), scores, in_pixels=not gt.has_spacing)


def placed_by_each_other(pred: Volume, gt: Volume) -> tuple[Volume, Volume]:
    """A mask whose file gives no geometry (a PNG) of the other's shape on the other's grid, as a
    mask prompt is taken on its image's: its pixels are those of the same slice."""
    if states_geometry(pred) == states_geometry(gt) or pred.shape != gt.shape:
        return pred, gt
    return (gt.with_array(pred.array), gt) if states_geometry(gt) else (pred, pred.with_array(gt.array))


def score_video_pair(pred_path: Path, gt_path: Path, tolerance_mm: float) -> CaseScores:
    """Masks of a video's frames (either file says so: a 2D+t NIfTI, a video's npz), scored frame by
    frame in 2D with the ground truth's pixel spacing."""
    pred, gt = load_video_mask(pred_path), load_video_mask(gt_path)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction {pred_path.name} and ground truth {gt_path.name}: {pred.shape[0]} frames of {pred.shape[2]}x{pred.shape[1]} "
            f"vs {gt.shape[0]} of {gt.shape[2]}x{gt.shape[1]}"
        )
    spacing = video_mask_pixel_spacing(gt_path)
    scores = evaluate_frames(pred, gt, spacing or (1.0, 1.0), tolerance_mm=tolerance_mm)
    return CaseScores(mask_file_stem(gt_path), scores, in_pixels=spacing is None, video=True)


def score_missing_prediction(gt_path: Path) -> CaseScores:
    """A ground truth with no prediction fails every label. Not scored as an empty prediction: a
    missing file is more often a run that crashed than a deliberate "nothing found", and an empty
    prediction would score it perfect on an empty case."""
    video = is_video_mask(gt_path)
    labels, voxels = np.unique(load_video_mask(gt_path) if video else load_mask(gt_path).array, return_counts=True)
    scores = [failed_label(int(label), int(count)) for label, count in zip(labels, voxels) if label != 0]
    return CaseScores(mask_file_stem(gt_path), scores, missing_prediction=True, video=video)


def failed_label(label: int, gt_voxels: int = 0) -> LabelScores:
    """The worst scores, those of a missed object."""
    return LabelScores(label=label, dice=0.0, nsd=0.0, hd95=math.inf, pred_voxels=0, gt_voxels=gt_voxels)


def absent_label(label: int) -> LabelScores:
    """A label in neither mask of a case: nothing to find and nothing found (medsam2.metrics' both-empty scores)."""
    return LabelScores(label=label, dice=1.0, nsd=1.0, hd95=0.0, pred_voxels=0, gt_voxels=0)


def pair_folders(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[Path | None, Path]], list[str]]:
    """Every ground truth with the prediction of the same file name (extension aside), None where
    there is none; and the names of the predictions that have no ground truth."""
    preds = {mask_file_stem(p): p for p in list_image_files(pred_dir)}
    gts = {mask_file_stem(g): g for g in list_image_files(gt_dir)}
    if not preds.keys() & gts.keys():
        raise InputError(f"no file names in common between {pred_dir} and {gt_dir}")
    return [(preds.get(name), gts[name]) for name in sorted(gts)], sorted(preds.keys() - gts.keys())


def scored_labels(cases: list[CaseScores]) -> list[int]:
    """Every label that any mask holds, each scored in every case so that its mean is over all
    cases; label 1 (a binary mask's foreground) where no mask holds any, so empty masks get a score."""
    return sorted({score.label for case in cases for score in case.scores}) or [1]


def case_rows(cases: list[CaseScores], labels: list[int]) -> list[dict]:
    """One row per case and label: case, label, dice, nsd, hd95, voxel counts, missing_prediction."""
    rows = []
    for case in cases:
        held = {score.label: score for score in case.scores}
        for label in labels:
            if label in held:
                score = held[label]
            else:
                score = failed_label(label) if case.missing_prediction else absent_label(label)
            rows.append({"case": case.name, **asdict(score), "missing_prediction": case.missing_prediction})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of each metric per label (inf HD95 values left out, counted)."""
    summary = []
    for label in sorted({row["label"] for row in rows}):
        of_label = [row for row in rows if row["label"] == label]
        entry: dict = {"label": label, "cases": len(of_label)}
        for metric in ("dice", "nsd", "hd95"):
            values = np.array([row[metric] for row in of_label], dtype=float)
            finite = values[np.isfinite(values)]
            entry[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
            entry[f"{metric}_std"] = float(finite.std()) if finite.size else math.nan
        entry["hd95_infinite"] = int(sum(not math.isfinite(row["hd95"]) for row in of_label))
        summary.append(entry)
    return summary


def pairing_notes(missing: list[str], ignored: list[str]) -> list[str]:
    notes = []
    if missing:
        have = "case has" if len(missing) == 1 else "cases have"
        notes.append(f"{len(missing)} {have} no prediction, scored DSC 0, NSD 0, HD95 inf: {', '.join(missing)}")
    if ignored:
        have = "prediction has" if len(ignored) == 1 else "predictions have"
        notes.append(f"{len(ignored)} {have} no ground truth, ignored: {', '.join(ignored)}")
    return notes


def pixel_note(cases: list[CaseScores]) -> list[str]:
    """Where ground truths (PNG, an npz without "spacing") give no spacing, their distances are in pixels."""
    names = [case.name for case in cases if case.in_pixels]
    if not names:
        return []
    return [f"{counted(len(names), 'ground truth')} without a spacing (pixel units): HD95 and the NSD tolerance are in pixels there, not mm: {', '.join(names)}"]


def video_note(cases: list[CaseScores]) -> list[str]:
    names = [case.name for case in cases if case.video]
    if not names:
        return []
    return [f"{counted(len(names), 'video')}, scored frame by frame in 2D, each label's scores the mean over the frames where either mask holds it: {', '.join(names)}"]


def label_note(rows: list[dict]) -> list[str]:
    """A warning where no label is held by both a prediction and a ground truth: masks written with
    other values for the same object (0/255 pictures against 0/1 label maps, say) are scored as
    different labels, each a complete miss."""
    predicted = {row["label"] for row in rows if row["pred_voxels"]}
    truth = {row["label"] for row in rows if row["gt_voxels"]}
    if not predicted or not truth or predicted & truth:
        return []
    listed = ", ".join(map(str, sorted(predicted))), ", ".join(map(str, sorted(truth)))
    return [
        f"warning: the predictions hold label(s) {listed[0]} and the ground truths {listed[1]}, never the same: "
        "labels are compared by value (is one side 0/255 and the other 0/1?)"
    ]


def distance_unit(cases: list[CaseScores]) -> str:
    """The unit of the HD95 columns: mm, px where no ground truth gives a spacing, both when mixed."""
    in_pixels = {case.in_pixels for case in cases if not case.missing_prediction}
    return "px" if in_pixels == {True} else "mm/px, see below" if len(in_pixels) > 1 else "mm"


def print_tables(rows: list[dict], summary: list[dict], console: Console, unit: str) -> None:
    table = Table(title="Per case")
    for column in ("case", "label", "DSC", "NSD", f"HD95 ({unit})"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for row in rows:
        case = f"{row['case']} (no prediction)" if row["missing_prediction"] else row["case"]
        table.add_row(case, str(row["label"]), f"{row['dice']:.4f}", f"{row['nsd']:.4f}", f"{row['hd95']:.2f}")
    console.print(table)
    if len({row["case"] for row in rows}) > 1:
        mean_table = Table(title="Summary (mean ± sd; +N inf: cases whose HD95 is infinite, left out of it)")
        for column in ("label", "cases", "DSC", "NSD", f"HD95 ({unit})"):
            mean_table.add_column(column, justify="right")
        for entry in summary:
            mean_table.add_row(
                str(entry["label"]),
                str(entry["cases"]),
                f"{entry['dice_mean']:.4f} ± {entry['dice_std']:.4f}",
                f"{entry['nsd_mean']:.4f} ± {entry['nsd_std']:.4f}",
                f"{entry['hd95_mean']:.2f} ± {entry['hd95_std']:.2f}"
                + (f" (+{entry['hd95_infinite']} inf)" if entry["hd95_infinite"] else ""),
            )
        console.print(mean_table)


def rows_as_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_safe(value):
    """`value` with every non-finite float as None: JSON has no inf or nan (Python's `Infinity` and
    `NaN` are rejected by JSON.parse, jq and most other readers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


@reports_input_errors
def eval_command(
    pred: Path = typer.Argument(..., metavar="PRED", help="Predicted mask file, or a folder of them."),
    gt: Path = typer.Argument(..., metavar="GT", help="Ground-truth mask file, or a folder matched to PRED by file name."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", min=0.0, help="NSD tolerance in mm."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write per-case scores and the summary as JSON (null where a value is inf or nan)."
    ),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also write per-case scores as CSV (inf written as inf)."),
    image: Path | None = typer.Option(
        None, "--image", help="The scan of a PRED/GT file pair: the DICOM series that DICOM-SEG masks segment (their frames are its slices)."
    ),
) -> None:
    """Score PRED against GT: Dice (DSC), normalised surface distance (NSD) and HD95, per label.

    Distances use the ground truth's voxel spacing (mm; pixels where its file
    gives none, as in PNG, which a note says). Masks of a video (as segment
    writes them: a 2D+t NIfTI, an npz with the video's pixel_spacing) are
    scored frame by frame in 2D, each label's scores averaged over the frames
    where either mask holds it. Both empty: DSC 1,
    NSD 1, HD95 0; one empty: DSC 0, NSD 0, HD95 inf. Files must share shape
    and geometry. Every case is scored on every label found in any mask.

    Folders are matched by file name. A ground truth without a prediction
    fails (DSC 0, NSD 0, HD95 inf) and is listed and flagged
    (missing_prediction); predictions without a ground truth are listed and
    ignored.

    Examples:

      medsam2 eval pred.nii.gz gt.nii.gz --nsd-tolerance 2

      medsam2 eval preds/ labels/ --csv scores.csv

      medsam2 eval pred_seg.dcm gt_seg.dcm --image ct_series/
    """
    for path in (pred, gt):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise InputError(f"{pred} and {gt}: give two files or two folders")
    if image is not None and pred.is_dir():
        raise InputError("--image is for a pair of mask files (of one scan), not folders")
    for option, report in (("--json", json_out), ("--csv", csv_out)):
        if report is not None and report.is_dir():
            raise InputError(f"{option} {report}: is a folder; name the report file, e.g. {report / ('scores' + option.replace('--', '.'))}")
    check_output_paths([pred, gt, image], [json_out, csv_out])
    if image is None and not pred.is_dir():
        for path in (pred, gt):
            if is_segmentation(path):
                raise InputError(f"{path}: a DICOM-SEG, read against the DICOM series it segments: give the series with --image SERIES")
    scan = load_image(image) if image is not None else None
    pairs, ignored = pair_folders(pred, gt) if pred.is_dir() else ([(pred, gt)], [])
    cases = [
        score_pair(pred_path, gt_path, nsd_tolerance, scan) if pred_path is not None else score_missing_prediction(gt_path)
        for pred_path, gt_path in pairs
    ]
    rows = case_rows(cases, scored_labels(cases))
    summary = summarise(rows)
    missing = [case.name for case in cases if case.missing_prediction]
    console = StdoutConsole()
    print_tables(rows, summary, console, distance_unit(cases))
    for note in pairing_notes(missing, ignored) + video_note(cases) + pixel_note(cases) + label_note(rows):
        console.print(note, markup=False, highlight=False, soft_wrap=True)  # one line, however many names
    report = {"cases": rows, "summary": summary, "missing_predictions": missing, "ignored_predictions": ignored}
    with outputs_together([json_out, csv_out]) as (json_target, csv_target):
        if json_target is not None:
            json_target.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        if csv_target is not None:
            csv_target.write_text(rows_as_csv(rows))
