"""Segmentation scores in physical units: Dice (DSC), normalised surface distance (NSD), HD95.

Arrays are binary masks or label maps in medsam2's axis order, ``(Z, Y, X)`` for volumes and
``(Y, X)`` for slices. ``spacing`` is given in `Volume`'s ``(x, y, z)`` order, ``(sx, sy, sz)`` (a
2D array also accepts ``(sx, sy)``); it is reversed here to array-axis order ``(sz, sy, sx)``, the
order MONAI expects, so a one-slice shift along Z counts ``sz`` millimetres.

- NSD at tolerance ``t`` (surface Dice): the share of the surface area of both masks that lies
  within ``t`` mm of the other mask's surface. Surfaces are DeepMind's surface elements (on voxel
  corners, each weighted by its area), as in the ``surface-distance`` package that MedSAM and the
  FLARE challenges evaluate with: `monai.metrics.compute_surface_dice` with ``use_subvoxels=True``.
  (Counting boundary voxels instead, MONAI's default, scores far lower on thick-slice CT.)
- HD95: the larger of the two directed 95th percentiles of the distances between the masks'
  boundary voxels (those with a background face-neighbour; outside the array is background),
  Euclidean in mm between voxel centres: `monai.metrics.compute_hausdorff_distance`, ``percentile=95``.

Empty masks have defined scores: both empty gives DSC 1, NSD 1 and HD95 0 (nothing to find and
nothing found); one empty gives DSC 0, NSD 0 and HD95 ``inf`` (no surface to measure to; ``inf``
rather than ``nan`` so that a nan-skipping mean cannot drop a missed object silently).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from medsam2.errors import InputError
from medsam2.io.masks import check_label_values


@dataclass(frozen=True)
class LabelScores:
    """The scores of one label; distances in mm."""

    label: int
    dice: float
    nsd: float
    hd95: float
    pred_voxels: int
    gt_voxels: int


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient of two masks (non-zero = foreground), 2|P & G| / (|P| + |G|)."""
    pred_mask, gt_mask = _masks(pred, gt)
    total = np.count_nonzero(pred_mask) + np.count_nonzero(gt_mask)
    if total == 0:
        return 1.0
    return float(2 * np.count_nonzero(pred_mask & gt_mask) / total)


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface distance (surface Dice) at `tolerance_mm`; `spacing` in (x, y, z) order."""
    if isinstance(tolerance_mm, bool) or not isinstance(tolerance_mm, int | float | np.number) or not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"NSD tolerance {tolerance_mm} mm: must be a finite number >= 0")
    pred_mask, gt_mask = _masks(pred, gt)
    axis_spacing = _axis_spacing(spacing, pred_mask.ndim)
    empty = _empty_case(pred_mask, gt_mask)
    if empty is not None:
        return empty
    pred_crop, gt_crop = _crop_to_union(pred_mask, gt_mask)
    with _monai_metrics() as metrics:
        score = metrics.compute_surface_dice(
            torch.from_numpy(pred_crop[None, None]),
            torch.from_numpy(gt_crop[None, None]),
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=axis_spacing,
            use_subvoxels=True,
        )
    return float(score[0, 0])


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; `spacing` in (x, y, z) order."""
    pred_mask, gt_mask = _masks(pred, gt)
    axis_spacing = _axis_spacing(spacing, pred_mask.ndim)
    empty = _empty_case(pred_mask, gt_mask)
    if empty is not None:
        return 0.0 if empty == 1.0 else math.inf
    pred_crop, gt_crop = _crop_to_union(pred_mask, gt_mask)
    with _monai_metrics() as metrics:
        distance = metrics.compute_hausdorff_distance(
            torch.from_numpy(pred_crop[None, None]),
            torch.from_numpy(gt_crop[None, None]),
            include_background=True,
            percentile=95,
            spacing=axis_spacing,
        )
    return float(distance[0, 0])


def evaluate(
    pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> list[LabelScores]:
    """Scores for every non-zero label present in either map, in increasing label order."""
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_pair(pred_labels, gt_labels)
    for labels, which in ((pred_labels, "prediction"), (gt_labels, "ground truth")):
        check_label_values(labels, which)  # 0.5 was scored as label 0, and -1 as a label
    _axis_spacing(spacing, pred_labels.ndim)
    labels = np.union1d(np.unique(pred_labels), np.unique(gt_labels))
    scores = []
    for label in labels[labels != 0]:
        pred_mask, gt_mask = pred_labels == label, gt_labels == label
        scores.append(
            LabelScores(
                label=int(label),
                dice=dice(pred_mask, gt_mask),
                nsd=nsd(pred_mask, gt_mask, spacing, tolerance_mm),
                hd95=hd95(pred_mask, gt_mask, spacing),
                pred_voxels=int(np.count_nonzero(pred_mask)),
                gt_voxels=int(np.count_nonzero(gt_mask)),
            )
        )
    return scores


def evaluate_frames(
    pred_labels: np.ndarray, gt_labels: np.ndarray, pixel_spacing: Sequence[float], tolerance_mm: float = 2.0
) -> list[LabelScores]:
    """Scores of a video's (T, H, W) label maps, `evaluate` frame by frame in 2D (frames are moments,
    not slices: no distance runs between them), each label's averaged over the frames where either
    map holds it (a frame where one misses it scores DSC 0, NSD 0, HD95 inf); `pixel_spacing` (sx, sy)."""
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)  # lists, tensors: as `evaluate` takes
    _check_pair(pred_labels, gt_labels)
    if pred_labels.ndim != 3:
        raise InputError(f"video masks must be (T, H, W), got shape {pred_labels.shape}")
    by_label: dict[int, list[LabelScores]] = {}
    for pred_frame, gt_frame in zip(pred_labels, gt_labels):
        for scores in evaluate(pred_frame, gt_frame, pixel_spacing, tolerance_mm):
            by_label.setdefault(scores.label, []).append(scores)
    return [
        LabelScores(
            label=label,
            dice=float(np.mean([s.dice for s in frames])),
            nsd=float(np.mean([s.nsd for s in frames])),
            hd95=float(np.mean([s.hd95 for s in frames])),
            pred_voxels=sum(s.pred_voxels for s in frames),
            gt_voxels=sum(s.gt_voxels for s in frames),
        )
        for label, frames in sorted(by_label.items())
    ]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if pred.ndim not in (2, 3):
        raise InputError(f"masks must be 2D (Y, X) or 3D (Z, Y, X), got shape {pred.shape}")


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)  # lists too
    _check_pair(pred, gt)
    return pred != 0, gt != 0


def _axis_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """(x, y[, z]) spacing -> per array axis, (sy, sx) or (sz, sy, sx)."""
    try:
        values = [float(s) for s in np.asarray(spacing, dtype=float).ravel()]
    except (TypeError, ValueError):  # "1,1,1", None: float()'s own message said nothing of spacing
        values = []
    if np.ndim(spacing) != 1 or len(values) < ndim or not all(math.isfinite(s) and s > 0 for s in values[:ndim]):
        raise InputError(f"spacing {spacing!r}: need {ndim} positive values in (x, y, z) order")
    return tuple(reversed(values[:ndim]))


def _empty_case(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """1.0 when both masks are empty, 0.0 when one is, None when neither is."""
    pred_any, gt_any = bool(pred.any()), bool(gt.any())
    if pred_any and gt_any:
        return None
    return 0.0 if pred_any or gt_any else 1.0


@contextmanager
def _monai_metrics() -> Iterator[ModuleType]:
    """`monai.metrics`, imported on first use (MONAI takes over a second to import, which every
    command would pay at start) and quieted: MONAI 1.5 and later pass a deprecated argument to their
    own get_mask_edges on every call."""
    from monai import metrics

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        yield metrics


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their union's bounding box plus one voxel, where the array allows.

    MONAI crops the same way, but only after copying the whole arrays to float tensors; cropping
    first keeps a small lesion in a large volume cheap. The kept margin (or the array's own edge)
    is background, so the boundary voxels and distances are unchanged.
    """
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return np.ascontiguousarray(pred[tuple(box)]), np.ascontiguousarray(gt[tuple(box)])
