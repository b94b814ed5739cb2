"""A segmentation session: one stack of slices, one model, any number of objects.

Every prompted slice of an object is an *anchor*. From each anchor the object is followed outwards,
one *run* per direction; between two anchors the runs meet in the middle. How a run follows the
object is the model family's business (`medsam2.engine.tracking`): 2D models such as LiteMedSAM
prompt each slice with the box of the previous one and stop where the object ends; SAM 2.1 and
MedSAM2 carry a memory bank along the run. A run is identified by (anchor, step); it depends on its
anchor and the next anchor ahead, so adding, changing or removing a prompt on slice s marks dirty only
the runs that cover slices between s's neighbouring anchors, and `propagate` recomputes only those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from medsam2.engine.box_chain import BoxChainTracker
from medsam2.engine.postprocess import fill_holes_per_slice, largest_component
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import MAX_OBJECT_ID, Prompt, whole_number
from medsam2.engine.tracking import PropagationConfig, Run, TrackingPredictor
from medsam2.errors import InputError
from medsam2.io.masks import as_label_map
from medsam2.io.volume import is_slice_stack
from medsam2.progress import leave_finished_bar

__all__ = ["Direction", "PropagationConfig", "Session", "TrackedObject", "check_direction", "merge_prompts", "object_ids"]

Direction = Literal["both", "forward", "backward"]
STEPS: dict[str, tuple[int, ...]] = {"both": (1, -1), "forward": (1,), "backward": (-1,)}


@dataclass
class TrackedObject:
    """What the session knows about one object."""

    name: str | None = None
    prompts: dict[int, Prompt] = field(default_factory=dict)  # anchor slice -> merged prompt
    anchor_states: dict[int, Any] = field(default_factory=dict)  # anchor slice -> what the tracker keeps
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # slice -> (H, W) bool, non-empty only
    dirty_runs: set[tuple[int, int]] = field(default_factory=set)  # (anchor, step)

    def anchors(self) -> list[int]:
        return sorted(self.prompts)


class Session:
    """Prompt, propagate and correct objects on a (Z, H, W[, 3]) uint8 stack of slices.

    `predictor` is a `SlicePredictor` (followed by the box chain) or a `TrackingPredictor` that
    brings its own tracker (SAM 2.1 / MedSAM2); `config` defaults to the tracker's own."""

    def __init__(
        self,
        slices: np.ndarray,
        predictor: SlicePredictor | TrackingPredictor,
        config: PropagationConfig | None = None,
        unit: str = "slice",
    ):
        if not isinstance(slices, np.ndarray) or slices.dtype != np.uint8 or not is_slice_stack(slices):
            got = f"{slices.dtype} {slices.shape}" if isinstance(slices, np.ndarray) else type(slices).__name__
            raise InputError(
                f"a session takes a (Z, H, W) or (Z, H, W, 3) uint8 stack of slices, not {got} "
                "(medsam2.engine.api.prepare_slices makes one from a Volume)"
            )
        if config is not None and not isinstance(config, PropagationConfig):
            raise InputError(f"config must be a PropagationConfig (medsam2.engine.tracking), not {type(config).__name__}")
        if not isinstance(predictor, TrackingPredictor) and not all(hasattr(predictor, m) for m in ("encode", "predict")):
            # a model's name or path: was accepted here and failed on the first prompt with an AttributeError
            raise InputError(
                f"predictor must be a loaded model (medsam2.engine.models.load_predictor(...)), not {type(predictor).__name__}"
            )
        self.slices = slices
        self.predictor = predictor
        self.unit = unit  # what a slice is called on the progress bar ("frame": a video's)
        if isinstance(predictor, TrackingPredictor):
            self.tracker = predictor.tracker(slices, config)
        elif config is not None and config.memory != "recent":
            raise InputError(f"memory bank {config.memory!r}: only memory models (SAM 2.1 / MedSAM2) have one")
        else:
            self.tracker = BoxChainTracker(slices, predictor, config or PropagationConfig())
        self.config = self.tracker.config
        self.embeddings = self.tracker.embeddings
        self.objects: dict[int, TrackedObject] = {}

    @property
    def num_slices(self) -> int:
        return self.slices.shape[0]

    @property
    def slice_hw(self) -> tuple[int, int]:
        return self.slices.shape[1], self.slices.shape[2]

    # -- prompts ---------------------------------------------------------------------------------

    def add_prompt(
        self,
        slice_index: int,
        obj_id: int = 1,
        *,
        box: ArrayLike | None = None,
        points: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Prompt object `obj_id` on one slice and return its mask there (H, W) bool. A box is
        x1,y1,x2,y2, points (N, 2) x,y with N labels (1 object, 0 background), a mask (H, W) of 0
        and 1: lists, tuples, numpy arrays or tensors.

        Clicks add to the clicks already on that slice; a new box replaces the old box; a mask
        replaces everything (an empty one takes the object off the slice, and propagation starts
        nothing from there). Nothing else is recomputed until `propagate`.
        """
        prompt = Prompt(slice_index, obj_id, box=box, points=() if points is None else points, labels=() if labels is None else labels, mask=mask, name=name)
        return self.apply(prompt)

    def apply(self, prompt: Prompt) -> np.ndarray:
        """`add_prompt` for a ready-made `Prompt`."""
        index = prompt.slice_index
        known = self.objects.get(prompt.obj_id) or TrackedObject()
        merged = merge_prompts(known.prompts.get(index), prompt)
        merged.validate(self.num_slices, *self.slice_hw)  # the new prompt with the slice's earlier clicks
        where = f"prompt on slice {prompt.slice_index} (object {prompt.obj_id})"
        if merged.erases and prompt.obj_id not in self.objects:
            raise InputError(f"{where}: an empty mask takes an object off a slice, and object {prompt.obj_id} has no mask yet")
        source = self._mask_source(known, index) if merged.only_background else None
        slice_mask, state = self.tracker.segment_anchor(
            merged, known.anchor_states.get(index), known.masks.get(index), self._neighbour_mask(known, index), source
        )
        if not slice_mask.any() and not merged.erases:
            raise InputError(f"{where}: the model found nothing there")
        tracked = self.objects.setdefault(prompt.obj_id, known)
        tracked.name = prompt.name or tracked.name
        tracked.prompts[index] = merged
        tracked.anchor_states[index] = state
        if slice_mask.any():
            tracked.masks[index] = slice_mask
        else:
            tracked.masks.pop(index, None)
        tracked.dirty_runs |= self._runs_touching(tracked, index)
        return slice_mask

    def _neighbour_mask(self, tracked: TrackedObject, index: int) -> np.ndarray | None:
        """Where the object has no mask on slice `index`: its masks on the slices either side, merged
        (None where it has none there either)."""
        if index in tracked.masks:
            return None
        beside = [tracked.masks[i] for i in (index - 1, index + 1) if i in tracked.masks]
        return np.logical_or.reduce(beside) if beside else None

    def _mask_source(self, tracked: TrackedObject, index: int) -> Any | None:
        """The tracker's state for the anchor whose mask is on slice `index`: its own prompt's, or the
        state of the anchor whose run reached it (None where no mask is)."""
        if index not in tracked.masks:
            return None
        covering = [anchor for anchor in tracked.anchors() for step in (1, -1) if index == anchor or index in self._run_slices(tracked, anchor, step)]
        return self._anchor_state(tracked, covering[0]) if covering else None

    def refines_propagated_mask(self, prompt: Prompt) -> bool:
        """Whether `prompt` is clicks on a slice where its object has no prompt yet: the model takes
        the mask propagated there with them (SAM 2.1 as Meta's predictor does, LiteMedSAM its box,
        or the box of the masks beside it where there is none), so their result depends on whether
        propagation ran before them."""
        tracked = self.objects.get(prompt.obj_id)
        return prompt.box is None and prompt.mask is None and tracked is not None and prompt.slice_index not in tracked.prompts

    def load_labels(self, labels: np.ndarray, names: dict[int, str] | None = None) -> list[int]:
        """Take a finished (Z, H, W) label map as the session's objects, in place of those it had:
        each label becomes an object whose every non-empty slice holds its mask as a prompt. The
        masks are kept exactly and nothing waits for propagation; a correction on a slice then changes
        that slice (and, past an object's first or last slice, what propagation reaches from there).
        Returns the object ids. No model runs here: a slice's memory is made when a run first needs it."""
        labels = np.asarray(labels)
        if labels.shape != (self.num_slices, *self.slice_hw):
            raise InputError(f"label map of shape {labels.shape} does not fit the {(self.num_slices, *self.slice_hw)} slices")
        # a fraction or a negative would lose its object; an image (the scan itself) made 255 objects
        labels = as_label_map(labels, "Session.load_labels")
        ids = object_ids(labels)
        objects = {obj_id: TrackedObject(name=(names or {}).get(obj_id)) for obj_id in ids}
        for index, plane in enumerate(labels):  # slice by slice: a map of many labels is never copied whole per label
            for obj_id in (int(label) for label in np.unique(plane) if label != 0):
                mask = plane == obj_id
                objects[obj_id].prompts[index] = Prompt(index, obj_id, mask=mask)
                objects[obj_id].masks[index] = mask
        self.objects = objects
        return ids

    def remove_prompt(self, slice_index: int, obj_id: int) -> None:
        """Take back every prompt of object `obj_id` on one slice (an undo). The runs its neighbouring
        anchors reach into are recomputed by the next `propagate`; an object left with no prompt is
        forgotten."""
        tracked = self._tracked(obj_id)
        slice_index = whole_number(slice_index, "slice index")  # 9.0 was a TypeError from range() below
        if slice_index not in tracked.prompts:
            raise InputError(f"object {obj_id} has no prompt on slice {slice_index} (prompted: {tracked.anchors()})")
        dirty = self._runs_touching(tracked, slice_index)
        for run_slices in (self._run_slices(tracked, slice_index, step) for step in (1, -1)):
            for index in run_slices:
                tracked.masks.pop(index, None)
        for store in (tracked.prompts, tracked.anchor_states, tracked.masks):
            store.pop(slice_index, None)
        if not tracked.prompts:
            del self.objects[obj_id]
            return
        tracked.dirty_runs = {run for run in tracked.dirty_runs | dirty if run[0] in tracked.prompts}

    def snapshot(self, obj_id: int) -> TrackedObject | None:
        """What the session knows about an object now (None: nothing), for `restore`. Cheap: masks
        and states are shared, never changed in place."""
        tracked = self.objects.get(obj_id)
        if tracked is None:
            return None
        return TrackedObject(tracked.name, dict(tracked.prompts), dict(tracked.anchor_states), dict(tracked.masks), set(tracked.dirty_runs))

    def restore(self, obj_id: int, saved: TrackedObject | None) -> None:
        """Put an object back as `snapshot` found it, masks and pending runs included (an exact undo)."""
        if saved is None:
            self.objects.pop(obj_id, None)
        else:
            self.objects[obj_id] = saved

    def reset_object(self, obj_id: int) -> None:
        """Forget an object: its prompts and every mask propagated from them."""
        self._tracked(obj_id)
        del self.objects[obj_id]

    def _tracked(self, obj_id: int) -> TrackedObject:
        obj_id = whole_number(obj_id, "object id")
        if obj_id not in self.objects:
            raise InputError(f"unknown object id {obj_id} (known: {sorted(self.objects) or 'none'})")
        return self.objects[obj_id]

    # -- propagation -----------------------------------------------------------------------------

    def _runs_touching(self, tracked: TrackedObject, index: int) -> set[tuple[int, int]]:
        """The runs whose slices change when the anchor on `index` changes."""
        anchors = tracked.anchors()
        earlier = [a for a in anchors if a < index]
        later = [a for a in anchors if a > index]
        runs = {(index, 1), (index, -1)}
        if earlier:
            runs.add((earlier[-1], 1))
        if later:
            runs.add((later[0], -1))
        return runs

    def _next_anchor(self, tracked: TrackedObject, anchor: int, step: int) -> int | None:
        ahead = [a for a in tracked.anchors() if (a - anchor) * step > 0]
        return (min(ahead) if step > 0 else max(ahead)) if ahead else None

    def _run_slices(self, tracked: TrackedObject, anchor: int, step: int) -> range:
        """Slices a run covers: up to half-way to the next anchor in its direction, or the end."""
        ahead = self._next_anchor(tracked, anchor, step)
        if step > 0:
            stop = (anchor + ahead) // 2 if ahead is not None else self.num_slices - 1
            return range(anchor + 1, stop + 1)
        stop = (ahead + anchor) // 2 + 1 if ahead is not None else 0
        return range(anchor - 1, stop - 1, -1)

    def _run(self, obj_id: int, tracked: TrackedObject, anchor: int, step: int, slices: range) -> Run:
        ahead = self._next_anchor(tracked, anchor, step)
        depends_on = [anchor] + ([ahead] if ahead is not None else [])
        return Run(obj_id, anchor, step, slices, {index: self._anchor_state(tracked, index) for index in depends_on})

    def _anchor_state(self, tracked: TrackedObject, index: int) -> Any:
        """What the tracker keeps for an anchor; made now for a slice that `load_labels` set."""
        if index not in tracked.anchor_states:
            _, tracked.anchor_states[index] = self.tracker.segment_anchor(tracked.prompts[index], None, None)
        return tracked.anchor_states[index]

    def needs_propagation(self, obj_id: int) -> bool:
        """Whether prompts changed since the last `propagate` in a way that changes slices they do not hold."""
        tracked = self._tracked(obj_id)
        return any(self._run_slices(tracked, anchor, step) for anchor, step in tracked.dirty_runs if anchor in tracked.prompts)

    def propagate(
        self,
        direction: Direction = "both",
        obj_ids: int | list[int] | None = None,
        progress: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        on_slice: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> None:
        """Follow every prompted object (or those in `obj_ids`) from its anchors through the stack,
        recomputing only the runs that prompts since the last call have changed.

        `progress` shows a bar on the terminal; `on_progress(done, total)` is called once before
        the first slice, which can take a while (its batch is encoded first), and after each slice
        (for front ends that report progress their own way); `on_slice(obj_id, index, logits)`
        receives each slice's (H, W) float32 logits as soon as they are computed (object where > 0)."""
        check_direction(direction)
        if isinstance(obj_ids, (int, np.integer)) and not isinstance(obj_ids, bool):
            obj_ids = [int(obj_ids)]  # one object: was "'int' object is not iterable"
        for obj_id in obj_ids or []:
            self._tracked(obj_id)
        runs: list[Run] = []
        for obj_id, tracked in sorted(self.objects.items()):
            if obj_ids is not None and obj_id not in obj_ids:
                continue
            for anchor, step in sorted(tracked.dirty_runs):
                if step not in STEPS[direction] or anchor not in tracked.prompts:
                    continue
                slices = self._run_slices(tracked, anchor, step)
                for index in slices:
                    tracked.masks.pop(index, None)
                if slices:
                    runs.append(self._run(obj_id, tracked, anchor, step, slices))
                else:
                    tracked.dirty_runs.discard((anchor, step))
        left = {(run.obj_id, run.anchor, run.step): len(run.slices) for run in runs}
        total = sum(left.values())
        # Nothing to propagate (one slice, or every slice prompted) shows no bar rather than an empty one.
        with tqdm(total=total, desc="propagating", unit=self.unit, disable=not progress or not total, leave=leave_finished_bar()) as bar:
            if on_progress is not None:
                on_progress(0, total)
            for done, (run, index, logits) in enumerate(self.tracker.follow(runs), start=1):
                tracked = self.objects[run.obj_id]
                if logits is not None:
                    mask = logits > 0
                    if mask.any():
                        tracked.masks[index] = mask
                    if on_slice is not None:
                        on_slice(run.obj_id, index, logits)
                bar.update(1)
                if on_progress is not None:
                    on_progress(done, total)
                key = (run.obj_id, run.anchor, run.step)
                left[key] -= 1
                if left[key] == 0:
                    tracked.dirty_runs.discard((run.anchor, run.step))

    # -- results ---------------------------------------------------------------------------------

    def object_mask(self, obj_id: int, keep_largest: bool = False, fill_holes: bool = False) -> np.ndarray:
        """(Z, H, W) bool mask of one object."""
        volume = np.zeros((self.num_slices, *self.slice_hw), dtype=bool)
        for index, mask in self._tracked(obj_id).masks.items():
            volume[index] = mask
        if fill_holes:
            volume = fill_holes_per_slice(volume)
        if keep_largest:
            volume = largest_component(volume)
        return volume

    def result(self, keep_largest: bool = False, fill_holes: bool = False) -> np.ndarray:
        """(Z, H, W) label volume: each object's id where it is; where objects overlap, the higher
        id wins."""
        labels = np.zeros((self.num_slices, *self.slice_hw), dtype=np.uint16)
        for obj_id in sorted(self.objects):
            labels[self.object_mask(obj_id, keep_largest, fill_holes)] = obj_id
        return labels


def check_direction(direction: object, what: str = "direction") -> None:
    """An InputError unless `direction` is one a session propagates in."""
    if direction not in STEPS:
        raise InputError(f"{what} must be one of {', '.join(STEPS)}, not {direction!r}")


def object_ids(labels: np.ndarray) -> list[int]:
    """The objects of a label map (its labels but 0), or an error for an empty map or an id out of range."""
    ids = [int(label) for label in np.unique(labels) if label != 0]
    if not ids:
        raise InputError("the label map is empty: it holds no object")
    if ids[-1] > MAX_OBJECT_ID:
        raise InputError(f"label {ids[-1]}: object ids run from 1 to {MAX_OBJECT_ID}")
    return ids


def merge_prompts(existing: Prompt | None, new: Prompt) -> Prompt:
    """The prompt a slice holds after `new` arrives on top of `existing`."""
    if existing is None or new.mask is not None:
        return new
    return replace(
        existing,
        box=new.box if new.box is not None else existing.box,
        points=existing.points + new.points,
        labels=existing.labels + new.labels,
        mask=None,
        name=new.name or existing.name,
    )
