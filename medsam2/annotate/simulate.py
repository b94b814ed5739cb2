"""A scripted annotator for effort studies: a reference mask is "the truth in the annotator's head".

It works through a leased case with the same `WorkSession` calls a person's front end makes (the
annotation routes' prompt and correction handlers call them too), so everything it does is recorded
like a person's work and re-propagates as the engine does. Unless the case arrives pre-segmented,
it first draws a box around each object on the slice where the object is largest. Then, until the
3D Dice reaches the target or the correction cap is hit, it fixes the worst slice (the most wrong
pixels): with a box from the truth on that slice the first time; then with clicks added to that
slice's prompt, each one placed as SAM's interactive training and evaluation place them (see
`next_click`), up to `clicks_per_slice`; by drawing the slice by hand once clicks are used up, a
click did not make the slice better, or the model finds nothing; and by erasing a slice the object
does not reach. Every box, click, drawing and erasure is one interaction. Finally it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medsam2.annotate.work import WorkSession, covered_slices
from medsam2.engine.postprocess import largest_component
from medsam2.engine.prompts import box_from_mask
from medsam2.errors import InputError
from medsam2.io import to_slices
from medsam2.metrics import dice


@dataclass(frozen=True)
class SimulationConfig:
    target_dice: float = 0.90  # 3D Dice at which the annotator accepts
    max_corrections: int = 10  # ... or after this many corrections
    clicks_per_slice: int = 3  # clicks tried on a slice after its box before drawing it (0: draw at once)

    def __post_init__(self) -> None:
        if not 0 < self.target_dice <= 1 or self.max_corrections < 0 or self.clicks_per_slice < 0:
            raise InputError(
                f"simulated annotator: target Dice must be in (0, 1] and the caps >= 0 (got {self.target_dice}, "
                f"{self.max_corrections} corrections, {self.clicks_per_slice} clicks per slice)"
            )


@dataclass(frozen=True)
class Click:
    x: float  # slice pixels
    y: float
    label: int  # 1: the object was missed here; 0: the mask spilled here


@dataclass
class SimulationResult:
    case: str
    dice_after: list[float] = field(default_factory=list)  # 3D Dice after each interaction
    reached_target: bool = False
    manual_slices: int = 0  # slices the truth covers: the interactions of manual contouring
    steps: list[tuple[str, int]] = field(default_factory=list)  # (kind, slice) of each interaction, in order

    @property
    def final_dice(self) -> float:
        return self.dice_after[-1] if self.dice_after else 0.0

    def count(self, kind: str) -> int:
        """Interactions of one kind: "box", "click+" or "click-" (positive or negative), "drawn"
        (a slice drawn by hand) or "erased" (a slice erased by hand)."""
        return sum(step_kind == kind for step_kind, _ in self.steps)


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

    clicks_left: dict[tuple[int, int], int] = {}  # (slice, object) boxed -> clicks the annotator still tries there
    if not work.model.slice_labels().any():
        for obj_id in objects:
            areas = (truth_slices == obj_id).reshape(truth_slices.shape[0], -1).sum(axis=1)
            largest = int(np.argmax(areas))
            work.add_prompt(largest, obj_id, box=box_from_mask(truth_slices[largest] == obj_id))
            clicks_left[largest, obj_id] = config.clicks_per_slice
            result.steps.append(("box", largest))
    corrections = 0
    while score() < config.target_dice and corrections < config.max_corrections:
        index, obj_id = worst_slice(work.model.slice_labels(), truth_slices, objects)
        correct_slice(work, index, obj_id, truth_slices[index] == obj_id, clicks_left, config, result)
        corrections += 1
    result.reached_target = result.dice_after[-1] >= config.target_dice
    work.accept()
    return result


def correct_slice(
    work: WorkSession,
    index: int,
    obj_id: int,
    wanted: np.ndarray,
    clicks_left: dict[tuple[int, int], int],
    config: SimulationConfig,
    result: SimulationResult,
) -> None:
    """One interaction on slice `index` towards `wanted`, that object's (H, W) truth there."""
    key = (index, obj_id)
    if not wanted.any():
        work.add_correction(index, obj_id, wanted)
        result.steps.append(("erased", index))
        return
    current = work.model.slice_labels()[index] == obj_id
    try:
        if key not in clicks_left:
            work.add_prompt(index, obj_id, box=box_from_mask(wanted))
            clicks_left[key] = config.clicks_per_slice
            result.steps.append(("box", index))
            return
        click = next_click(current, wanted)
        if clicks_left[key] > 0 and click is not None:
            work.add_prompt(index, obj_id, points=[(click.x, click.y)], labels=[click.label])
            result.steps.append(("click+" if click.label else "click-", index))
            wrong_before = int((current != wanted).sum())
            wrong_after = int(((work.model.slice_labels()[index] == obj_id) != wanted).sum())
            # A click that did not help tells the annotator that clicks will not do here.
            clicks_left[key] = clicks_left[key] - 1 if wrong_after < wrong_before else 0
            return
    except InputError:  # the model found nothing from the prompt (nothing was recorded): draw instead
        clicks_left[key] = 0
    work.add_correction(index, obj_id, wanted)
    result.steps.append(("drawn", index))


def next_click(current: np.ndarray, wanted: np.ndarray) -> Click | None:
    """The next corrective click on one slice, as SAM's interactive simulation places it (after
    RITM): in the largest connected error region, missed object (a positive click) or spilled mask
    (a negative click), whichever is larger, at the point farthest from the region's edge (the
    maximum of its distance transform, the image border counting as edge). None where the masks
    agree."""
    missed = largest_component(wanted & ~current)
    spilled = largest_component(current & ~wanted)
    region, label = (missed, 1) if missed.sum() >= spilled.sum() else (spilled, 0)
    if not region.any():
        return None
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(float(col), float(row), label)


def worst_slice(current: np.ndarray, truth: np.ndarray, objects: list[int]) -> tuple[int, int]:
    """(slice, object) with the most wrong pixels."""
    errors = np.stack([((current == k) != (truth == k)).reshape(truth.shape[0], -1).sum(axis=1) for k in objects])
    position, index = np.unravel_index(int(np.argmax(errors)), errors.shape)
    return int(index), objects[position]
