"""One call from a volume and prompts to a label map in the volume's geometry."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import Prompt
from medsam2.engine.session import Direction, PropagationConfig, Session, check_direction
from medsam2.engine.tracking import TrackingPredictor
from medsam2.errors import InputError
from medsam2.io.masks import label_names
from medsam2.io.volume import SliceAxis, Volume, from_slices, slicing_axis_index, to_slices
from medsam2.preprocess import to_uint8

log = logging.getLogger(__name__)

# Fewer rows or columns than this and a slice resized for the model (256 or 512 pixels on its long
# side) keeps only a few: coronal and sagittal slices of thick-section CT (13 rows of 5 mm) get masks
# that spill outside their boxes.
MIN_SLICE_SIDE = 32
BLANK_SLICES = "the model sees one grey level everywhere (a blank image, or a window outside its intensities)"


@dataclass
class Result:
    """A segmentation: the label map (same geometry as the input) and what produced it."""

    labels: Volume  # (Z, Y, X) uint16 label map
    names: dict[int, str | None]  # object id -> name
    prompts: list[Prompt] = field(default_factory=list)
    slices: np.ndarray | None = field(default=None, repr=False)  # the uint8 slices the model saw, slicing axis first
    axis_index: int = 0  # array axis the slices were taken along


def as_prompt_list(prompts: object) -> list[Prompt]:
    """`segment_volume`'s prompts as a list: one `Prompt`, or any iterable of them; anything else
    (None, a dict, a tuple of numbers) is a one-line error rather than a TypeError inside."""
    if isinstance(prompts, Prompt):
        return [prompts]
    try:
        listed = list(prompts)  # type: ignore[call-overload]
    except TypeError:
        listed = None
    if listed is None or isinstance(prompts, (str, bytes, dict)) or not all(isinstance(p, Prompt) for p in listed):
        given = type(prompts).__name__ if listed is None or isinstance(prompts, (str, bytes, dict)) else (
            f"a {type(prompts).__name__} holding {type(next(p for p in listed if not isinstance(p, Prompt))).__name__}"
        )
        raise InputError(
            f"prompts must be a Prompt or a list of Prompts (medsam2.engine.prompts.Prompt(slice, object, box=...)), not {given}"
        )
    return listed


def prepare_slices(
    volume: Volume, axis: SliceAxis = "axial", window: str | None = None, refuse_blank: bool = False
) -> tuple[np.ndarray, int]:
    """The volume as a uint8 stack of slices along `axis` (slicing axis first) and that axis' index;
    `slice_warnings` are logged, or with `refuse_blank` a blank stack is a one-line error."""
    axis_index = slicing_axis_index(volume, axis)
    image = to_uint8(volume, window=window).array
    slices = np.ascontiguousarray(to_slices(image, axis_index))
    if refuse_blank and is_blank(slices):
        raise InputError(f"{volume.source or 'the image'}: {BLANK_SLICES}: nothing to segment")
    for warning in slice_warnings(slices, axis):
        log.warning("%s: %s", volume.source or "the image", warning)
    return slices, axis_index


def slice_warnings(slices: np.ndarray, axis: SliceAxis) -> list[str]:
    """What a user should know before prompting `slices` (uint8, slicing axis first): slices too
    narrow for the model, or one grey level everywhere (the model would still draw a mask from a box)."""
    warnings = [warning] if (warning := narrow_slices_warning(slices.shape[1:3], axis)) else []
    if is_blank(slices):
        warnings.append(f"{BLANK_SLICES}: its masks mean nothing")
    return warnings


def is_blank(slices: np.ndarray) -> bool:
    return bool(slices.size) and slices.min() == slices.max()


def narrow_slices_warning(slice_hw: tuple[int, int], axis: SliceAxis) -> str | None:
    """What to tell a user whose `axis` slices (rows, columns) are too narrow for the model, or None."""
    rows, columns = slice_hw
    if min(rows, columns) < MIN_SLICE_SIDE <= max(rows, columns):
        return (
            f"{axis} slices are {columns}×{rows} pixels (wide×high): too narrow for the model to segment reliably; "
            "choose the axis across the scan's thin dimension"
        )
    return None


def segment_volume(
    volume: Volume,
    prompts: Prompt | list[Prompt],
    predictor: SlicePredictor | TrackingPredictor,
    *,
    axis: SliceAxis = "axial",
    window: str | None = None,
    config: PropagationConfig | None = None,
    keep_largest: bool = False,
    fill_holes: bool = False,
    progress: bool = True,
    start: Volume | None = None,
    direction: Direction = "both",
) -> Result:
    """Segment every prompted object through `volume` (prompts in slice coordinates along `axis`).
    `start`: a label map of `volume` (`medsam2.io.masks.load_mask`) to correct instead of starting
    empty (`Session.load_labels`): its masks are kept but where the prompts change them, and the
    names its file gives its labels are the objects' names, unless a prompt names one.
    `direction`: propagate both ways from the prompted slices, or only "forward" (to higher slice
    indices) or "backward".
    A blank image (one grey level for the model) is refused: the model would still draw a mask from
    a box, and it would mean nothing."""
    if not isinstance(volume, Volume) or not (start is None or isinstance(start, Volume)):
        given = type(volume if not isinstance(volume, Volume) else start).__name__
        raise InputError(f"segment_volume takes Volumes (medsam2.io.load_image, or Volume(array)), not {given}")
    prompts = as_prompt_list(prompts)
    check_direction(direction, "segment_volume: direction")
    slices, axis_index = prepare_slices(volume, axis, window, refuse_blank=True)
    if not prompts and start is None:  # an all-zero label map came back, as if the model had found nothing
        raise InputError("segment_volume: no prompts; give at least one Prompt (or start=, a label map to keep)")
    session = Session(slices, predictor, config)
    if start is not None:
        session.load_labels(np.ascontiguousarray(to_slices(start.array, axis_index)), label_names(start))
    for prompt in prompts:
        session.apply(prompt)
    session.propagate(direction, progress=progress)
    labels = from_slices(session.result(keep_largest=keep_largest, fill_holes=fill_holes), axis_index)
    return Result(
        labels=volume.with_array(np.ascontiguousarray(labels)),
        names={obj_id: tracked.name for obj_id, tracked in session.objects.items()},
        prompts=list(prompts),
        slices=slices,
        axis_index=axis_index,
    )
