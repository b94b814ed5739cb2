"""Validation as users segment: one box on one slice, propagated through the whole stack.

Each object of each validation case gets the ground-truth bounding box on the slice where it is
largest and nothing else; the engine's session (the same propagation `medsam2 segment` runs, box
chain for LiteMedSAM, memory for SAM 2.1) follows it through every slice, and the 3D Dice with the
ground truth is the score. The validation DSC is the mean over all objects of all validation cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import box_from_mask
from medsam2.engine.session import Session
from medsam2.engine.tracking import TrackingPredictor
from medsam2.errors import InputError
from medsam2.metrics import dice
from medsam2.train.data import CaseData


def one_box_dice(case: CaseData, predictor: SlicePredictor | TrackingPredictor) -> dict[int, float]:
    """3D DSC per object of `case` from one GT box on its largest slice."""
    session = Session(case.slices, predictor)
    scores: dict[int, float] = {}
    for label in sorted(case.objects):
        key = case.largest_slice(label)
        try:
            session.add_prompt(key, obj_id=label, box=box_from_mask(case.labels[key] == label))
        except InputError:  # the model finds nothing inside the box: the object is missed
            scores[label] = 0.0
    session.propagate(progress=False)
    for label in session.objects:
        scores[label] = dice(session.object_mask(label), case.labels == label)
    return scores


def validation_scores(
    cases: Sequence[CaseData], predictor: SlicePredictor | TrackingPredictor
) -> list[tuple[str, int, float]]:
    """(case id, label, DSC) of every object of `cases`."""
    return [(case.id, label, score) for case in cases for label, score in sorted(one_box_dice(case, predictor).items())]


def mean_dice(scores: Sequence[tuple[str, int, float]]) -> float:
    return float(np.mean([score for *_, score in scores])) if scores else float("nan")
