"""A segmentation session: one stack of slices, one model, any number of objects.

Propagation (2D models such as LiteMedSAM)
------------------------------------------
Every prompted slice of an object is an *anchor*. From each anchor the object is followed slice by
slice outwards; each new slice is prompted with the box of the previous slice's mask (grown by a
margin so the object may widen) and, optionally, the previous low-resolution logits as a dense
prompt. A run stops where the object vanishes (mask smaller than `min_area` pixels or predicted IoU
below `min_score`, or an embedding inside the mask unlike the anchor's, `min_similarity`), so it
does not leak onto empty slices. Between two anchors the runs meet in the
middle. A run is identified by (anchor, step); adding or changing a prompt on slice s marks dirty only
the runs that cover slices between s's neighbouring anchors, and `propagate` recomputes only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from medsam2.engine.cache import EmbeddingCache
from medsam2.engine.postprocess import fill_holes_per_slice, largest_component
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.errors import InputError

Direction = Literal["both", "forward", "backward"]
STEPS: dict[str, tuple[int, ...]] = {"both": (1, -1), "forward": (1,), "backward": (-1,)}


@dataclass(frozen=True)
class PropagationConfig:
    """How an object is followed from slice to slice."""

    box_margin: float = 0.1  # box from the previous mask grows by this fraction of its size per side
    min_box_margin: float = 2.0  # ... and by at least this many pixels
    use_mask_prompt: bool = False  # feed the previous slice's low-res logits as a dense prompt
    min_area: int = 5  # pixels; a smaller mask means the object has ended
    min_score: float = 0.5  # predicted IoU; a lower one means the object has ended
    # Cosine similarity between the mask-averaged embedding on a slice and on its anchor; below it
    # the mask has moved onto something else (LiteMedSAM fills any box, even past the object's end).
    min_similarity: float = 0.6
    prefetch: int = 4  # slices encoded together ahead of the propagation front
    cache_slices: int = 64  # embeddings kept per session (LRU)


@dataclass
class TrackedObject:
    """What the session knows about one object."""

    name: str | None = None
    prompts: dict[int, Prompt] = field(default_factory=dict)  # anchor slice -> merged prompt
    seeds: dict[int, Any] = field(default_factory=dict)  # anchor slice -> low-res logits
    features: dict[int, np.ndarray] = field(default_factory=dict)  # anchor slice -> object feature
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # slice -> (H, W) bool, non-empty only
    dirty_runs: set[tuple[int, int]] = field(default_factory=set)  # (anchor, step)

    def anchors(self) -> list[int]:
        return sorted(self.prompts)


class Session:
    """Prompt, propagate and correct objects on a (Z, H, W[, 3]) uint8 stack of slices."""

    def __init__(self, slices: np.ndarray, predictor: SlicePredictor, config: PropagationConfig | None = None):
        if slices.dtype != np.uint8 or slices.ndim not in (3, 4):
            raise ValueError("a session takes a (Z, H, W) or (Z, H, W, 3) uint8 stack of slices")
        self.slices = slices
        self.predictor = predictor
        self.config = config or PropagationConfig()
        self.embeddings = EmbeddingCache(slices, predictor.encode, self.config.cache_slices)
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
        box: tuple[float, float, float, float] | None = None,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        mask: np.ndarray | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """Prompt object `obj_id` on one slice and return its mask there (H, W) bool.

        Clicks add to the clicks already on that slice; a new box replaces the old box; a mask
        replaces everything. Nothing else is recomputed until `propagate`.
        """
        prompt = Prompt(
            slice_index=slice_index,
            obj_id=obj_id,
            box=tuple(float(v) for v in box) if box is not None else None,
            points=tuple((float(x), float(y)) for x, y in (points or ())),
            labels=tuple(int(v) for v in (labels or ())),
            mask=None if mask is None else np.asarray(mask, dtype=bool),
            name=name,
        )
        return self.apply(prompt)

    def apply(self, prompt: Prompt) -> np.ndarray:
        """`add_prompt` for a ready-made `Prompt`."""
        prompt.validate(self.num_slices, *self.slice_hw)
        tracked = self.objects.setdefault(prompt.obj_id, TrackedObject())
        tracked.name = prompt.name or tracked.name
        merged = merge_prompts(tracked.prompts.get(prompt.slice_index), prompt)
        slice_mask, seed = self._segment_anchor(merged)
        if not slice_mask.any():
            raise InputError(
                f"prompt on slice {prompt.slice_index} (object {prompt.obj_id}): the model found nothing there"
            )
        index = prompt.slice_index
        tracked.prompts[index] = merged
        tracked.seeds[index] = seed
        tracked.features[index] = self.predictor.object_feature(self.embeddings.get(index), slice_mask)
        tracked.masks[index] = slice_mask
        tracked.dirty_runs |= self._runs_touching(tracked, index)
        return slice_mask

    def remove_prompt(self, slice_index: int, obj_id: int) -> None:
        """Take back every prompt of object `obj_id` on one slice (an undo). The runs its neighbouring
        anchors reach into are recomputed by the next `propagate`; an object left with no prompt is
        forgotten."""
        tracked = self._tracked(obj_id)
        if slice_index not in tracked.prompts:
            raise InputError(f"object {obj_id} has no prompt on slice {slice_index} (prompted: {tracked.anchors()})")
        dirty = self._runs_touching(tracked, slice_index)
        for run_slices in (self._run_slices(tracked, slice_index, step) for step in (1, -1)):
            for index in run_slices:
                tracked.masks.pop(index, None)
        for store in (tracked.prompts, tracked.seeds, tracked.features, tracked.masks):
            store.pop(slice_index, None)
        if not tracked.prompts:
            del self.objects[obj_id]
            return
        tracked.dirty_runs = {run for run in tracked.dirty_runs | dirty if run[0] in tracked.prompts}

    def reset_object(self, obj_id: int) -> None:
        """Forget an object: its prompts and every mask propagated from them."""
        self._tracked(obj_id)
        del self.objects[obj_id]

    def _tracked(self, obj_id: int) -> TrackedObject:
        if obj_id not in self.objects:
            raise InputError(f"unknown object id {obj_id} (known: {sorted(self.objects) or 'none'})")
        return self.objects[obj_id]

    def _segment_anchor(self, prompt: Prompt) -> tuple[np.ndarray, Any]:
        if prompt.mask is not None and prompt.box is None and not prompt.points:
            return prompt.mask, self.predictor.mask_to_low_res_logits(prompt.mask)
        prediction = self.predictor.predict(
            self.embeddings.get(prompt.slice_index),
            self.slice_hw,
            box=prompt.box,
            points=np.asarray(prompt.points, dtype=float).reshape(-1, 2) if prompt.points else None,
            labels=np.asarray(prompt.labels, dtype=int) if prompt.points else None,
            mask_logits=None if prompt.mask is None else self.predictor.mask_to_low_res_logits(prompt.mask),
        )
        return prediction.logits > 0, prediction.low_res_logits

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

    def _run_slices(self, tracked: TrackedObject, anchor: int, step: int) -> range:
        """Slices a run covers: up to half-way to the next anchor in its direction, or the end."""
        anchors = tracked.anchors()
        if step > 0:
            later = [a for a in anchors if a > anchor]
            stop = (anchor + later[0]) // 2 if later else self.num_slices - 1
            return range(anchor + 1, stop + 1)
        earlier = [a for a in anchors if a < anchor]
        stop = (earlier[-1] + anchor) // 2 + 1 if earlier else 0
        return range(anchor - 1, stop - 1, -1)

    def propagate(
        self,
        direction: Direction = "both",
        obj_ids: list[int] | None = None,
        progress: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Follow every prompted object (or those in `obj_ids`) from its anchors through the stack,
        recomputing only the runs that prompts since the last call have changed.

        `progress` shows a bar on the terminal; `on_progress(done, total)` is called after each
        slice (for front ends that report progress their own way)."""
        if direction not in STEPS:
            raise InputError(f"direction must be one of {', '.join(STEPS)}, not {direction!r}")
        for obj_id in obj_ids or []:
            self._tracked(obj_id)
        work = [
            (tracked, anchor, step)
            for obj_id, tracked in sorted(self.objects.items())
            if obj_ids is None or obj_id in obj_ids
            for anchor, step in sorted(tracked.dirty_runs)
            if step in STEPS[direction] and anchor in tracked.prompts
        ]
        total = sum(len(self._run_slices(tracked, anchor, step)) for tracked, anchor, step in work)
        finished = 0

        def advance(count: int) -> None:
            nonlocal finished
            finished += count
            bar.update(count)
            if on_progress is not None:
                on_progress(finished, total)

        with tqdm(total=total, desc="propagating", unit="slice", disable=not progress, leave=False) as bar:
            for tracked, anchor, step in work:
                covered = self._run_slices(tracked, anchor, step)
                for index in covered:
                    tracked.masks.pop(index, None)
                done = 0
                for done, (index, mask) in enumerate(self._follow(tracked, anchor, covered), start=1):
                    tracked.masks[index] = mask
                    advance(1)
                if len(covered) > done:
                    advance(len(covered) - done)
                tracked.dirty_runs.discard((anchor, step))

    def _follow(self, tracked: TrackedObject, anchor: int, covered: range) -> Iterator[tuple[int, np.ndarray]]:
        """Masks slice by slice along `covered`, until the object vanishes."""
        config = self.config
        previous_mask, previous_logits = tracked.masks[anchor], tracked.seeds[anchor]
        anchor_feature = tracked.features[anchor]
        slices = list(covered)
        for position, index in enumerate(slices):
            embedding = self.embeddings.get(index, prefetch=slices[position + 1 : position + config.prefetch])
            prediction = self.predictor.predict(
                embedding,
                self.slice_hw,
                box=self._box_around(previous_mask),
                mask_logits=previous_logits if config.use_mask_prompt else None,
            )
            mask = prediction.logits > 0
            if mask.sum() < config.min_area or prediction.score < config.min_score:
                return
            if cosine_similarity(self.predictor.object_feature(embedding, mask), anchor_feature) < config.min_similarity:
                return
            yield index, mask
            previous_mask, previous_logits = mask, prediction.low_res_logits

    def _box_around(self, mask: np.ndarray) -> tuple[float, float, float, float]:
        """The mask's box grown by the configured margin, clipped to the slice."""
        config = self.config
        x1, y1, x2, y2 = box_from_mask(mask)
        margin_x = max(config.box_margin * (x2 - x1), config.min_box_margin)
        margin_y = max(config.box_margin * (y2 - y1), config.min_box_margin)
        height, width = self.slice_hw
        return (max(x1 - margin_x, 0.0), max(y1 - margin_y, 0.0), min(x2 + margin_x, width - 1.0), min(y2 + margin_y, height - 1.0))

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


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


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
