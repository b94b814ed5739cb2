"""A scripted annotator for effort studies: a reference mask is "the truth in the annotator's head".

It works through a leased case with the same `WorkSession` calls a person's front end makes, so
everything it does is recorded like a person's work. Unless the case arrives pre-segmented, it
first draws a box around each object on the slice where the object is largest. Then, until the 3D
Dice reaches the target or the correction cap is hit, it fixes the worst slice (the most wrong
pixels): with a box from the truth on that slice the first time, by drawing the slice by hand if
the box was not enough, and by erasing a slice the object does not reach. Finally it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsam2.annotate.work import WorkSession, covered_slices
from medsam2.engine.prompts import box_from_mask
from medsam2.errors import InputError
from medsam2.io import to_slices
from medsam2.metrics import dice


@dataclass(frozen=True)
class SimulationConfig:
    target_dice: float = 0.90  # 3D Dice at which the annotator accepts
    max_corrections: int = 10  # ... or after this many corrections


@dataclass
class SimulationResult:
    case: str
    dice_after: list[float] = field(default_factory=list)  # 3D Dice after each interaction
    reached_target: bool = False
    manual_slices: int = 0  # slices the truth covers: the interactions of manual contouring

    @property
    def final_dice(self) -> float:
        return self.dice_after[-1] if self.dice_after else 0.0


def annotate_with_truth(work: WorkSession, truth: np.ndarray, config: SimulationConfig | None = None) -> SimulationResult:
    """Annotate `work`'s case towards `truth`, a (Z, Y, X) label map in the image's layout, and
    accept it."""
    config = config or SimulationConfig()
    truth_slices = to_slices(np.asarray(truth), work.model.axis_index)
    objects = [int(v) for v in np.unique(truth_slices) if v]
    if not objects:
        raise InputError(f"case {work.name}: the reference mask is empty")
    result = SimulationResult(work.name, manual_slices=len(covered_slices(truth_slices)))

    def score() -> float:
        value = dice(work.model.slice_labels() != 0, truth_slices != 0)
        result.dice_after.append(value)
        return value

    boxed: set[tuple[int, int]] = set()
    if not work.model.slice_labels().any():
        for obj_id in objects:
            areas = (truth_slices == obj_id).reshape(truth_slices.shape[0], -1).sum(axis=1)
            key = int(np.argmax(areas))
            work.add_prompt(key, obj_id, box=box_from_mask(truth_slices[key] == obj_id))
            boxed.add((key, obj_id))
    corrections = 0
    while score() < config.target_dice and corrections < config.max_corrections:
        index, obj_id = worst_slice(work.model.slice_labels(), truth_slices, objects)
        wanted = truth_slices[index] == obj_id
        if wanted.any() and (index, obj_id) not in boxed:
            boxed.add((index, obj_id))
            try:
                work.add_prompt(index, obj_id, box=box_from_mask(wanted))
            except InputError:  # the model found nothing in the box: draw the slice instead
                work.add_correction(index, obj_id, wanted)
        else:
            work.add_correction(index, obj_id, wanted)
        corrections += 1
    result.reached_target = result.dice_after[-1] >= config.target_dice
    work.accept()
    return result


def worst_slice(current: np.ndarray, truth: np.ndarray, objects: list[int]) -> tuple[int, int]:
    """(slice, object) with the most wrong pixels."""
    errors = np.stack([((current == k) != (truth == k)).reshape(truth.shape[0], -1).sum(axis=1) for k in objects])
    position, index = np.unravel_index(int(np.argmax(errors)), errors.shape)
    return int(index), objects[position]
