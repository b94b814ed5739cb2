"""`medsam2 eval`: score predicted masks against ground truth (DSC, NSD, HD95)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from medsam2.cli.errors import reports_input_errors
from medsam2.errors import InputError
from medsam2.io import check_same_geometry
from medsam2.io.masks import load_mask
from medsam2.io.paths import list_image_files, mask_file_stem
from medsam2.io.atomic import atomic_write_text
from medsam2.metrics import evaluate as evaluate_masks


def score_pair(pred_path: Path, gt_path: Path, tolerance_mm: float) -> list[dict]:
    """One row per label of the pair: case, label, dice, nsd, hd95, voxel counts."""
    pred, gt = load_mask(pred_path), load_mask(gt_path)
    check_same_geometry(pred, gt, what=f"prediction {pred_path.name} and ground truth {gt_path.name}")
    scores = evaluate_masks(pred.array, gt.array, spacing=gt.spacing, tolerance_mm=tolerance_mm)
    return [{"case": mask_file_stem(gt_path), **asdict(score)} for score in scores]


def pair_folders(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    """Predictions and ground truths matched by file name (extension aside)."""
    preds = {mask_file_stem(p): p for p in list_image_files(pred_dir)}
    gts = {mask_file_stem(g): g for g in list_image_files(gt_dir)}
    common = sorted(preds.keys() & gts.keys())
    if not common:
        raise InputError(f"no file names in common between {pred_dir} and {gt_dir}")
    return [(preds[name], gts[name]) for name in common]


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


def print_tables(rows: list[dict], summary: list[dict], console: Console) -> None:
    table = Table(title="Per case")
    for column in ("case", "label", "DSC", "NSD", "HD95 (mm)"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for row in rows:
        table.add_row(row["case"], str(row["label"]), f"{row['dice']:.4f}", f"{row['nsd']:.4f}", f"{row['hd95']:.2f}")
    console.print(table)
    if len({row["case"] for row in rows}) > 1:
        mean_table = Table(title="Summary (mean ± sd)")
        for column in ("label", "cases", "DSC", "NSD", "HD95 (mm)"):
            mean_table.add_column(column, justify="right")
        for entry in summary:
            mean_table.add_row(
                str(entry["label"]),
                str(entry["cases"]),
                f"{entry['dice_mean']:.4f} ± {entry['dice_std']:.4f}",
                f"{entry['nsd_mean']:.4f} ± {entry['nsd_std']:.4f}",
                f"{entry['hd95_mean']:.2f} ± {entry['hd95_std']:.2f}",
            )
        console.print(mean_table)


def rows_as_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@reports_input_errors
def eval_command(
    pred: Path = typer.Argument(..., help="Predicted mask file, or a folder of them."),
    gt: Path = typer.Argument(..., help="Ground-truth mask file, or a folder matched to PRED by file name."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", min=0.0, help="NSD tolerance in mm."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write per-case scores and the summary as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also write per-case scores as CSV."),
) -> None:
    """Score PRED against GT: Dice (DSC), normalised surface distance (NSD) and HD95, per label.

    Distances use the ground truth's voxel spacing (mm). Both empty: DSC 1, NSD 1, HD95 0;
    one empty: DSC 0, NSD 0, HD95 inf. Files must share shape and geometry.

    Examples:

      medsam2 eval pred.nii.gz gt.nii.gz --nsd-tolerance 2

      medsam2 eval preds/ labels/ --csv scores.csv
    """
    for path in (pred, gt):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise InputError(f"{pred} and {gt}: give two files or two folders")
    pairs = pair_folders(pred, gt) if pred.is_dir() else [(pred, gt)]
    rows = [row for pred_path, gt_path in pairs for row in score_pair(pred_path, gt_path, nsd_tolerance)]
    if not rows:
        raise InputError(f"{gt}: no labels in either mask")
    summary = summarise(rows)
    print_tables(rows, summary, Console())
    if json_out:
        atomic_write_text(json_out, json.dumps({"cases": rows, "summary": summary}, indent=2))
    if csv_out:
        atomic_write_text(csv_out, rows_as_csv(rows))
