"""Propagation for 2D promptable models (LiteMedSAM): each slice is prompted from the previous one.

From an anchor the object is followed slice by slice; each new slice is prompted with the box of the
previous slice's mask (grown by a margin so the object may widen) and, optionally, the previous
low-resolution logits as a dense prompt. A run stops where the object vanishes (mask smaller than
`min_area` pixels or predicted IoU below `min_score`, or an embedding inside the mask unlike the
anchor's, `min_similarity`), so it does not leak onto empty slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam2.engine.cache import EmbeddingCache
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.tracking import PropagationConfig, Run
from medsam2.errors import InputError


@dataclass
class BoxChainAnchor:
    """What a run needs from its anchor."""

    seed: Any  # the anchor's low-res logits
    feature: np.ndarray  # the embedding averaged inside the anchor's mask
    mask: np.ndarray  # (H, W) bool


def box_around(mask: np.ndarray, prompt: Prompt) -> tuple[float, float, float, float]:
    """The box of `mask` and `prompt`'s positive clicks."""
    grown = mask.copy()
    height, width = mask.shape
    for (x, y), label in zip(prompt.points, prompt.labels):
        if label == 1:
            grown[min(int(y), height - 1), min(int(x), width - 1)] = True
    return box_from_mask(grown)  # type: ignore[return-value]


class BoxChainTracker:
    """`Tracker` over a `SlicePredictor`; runs are followed one after the other."""

    def __init__(self, slices: np.ndarray, predictor: SlicePredictor, config: PropagationConfig) -> None:
        self.slices = slices
        self.predictor = predictor
        self.config = config
        self.embeddings = EmbeddingCache(slices, predictor.encode, config.cache_slices)

    @property
    def slice_hw(self) -> tuple[int, int]:
        return self.slices.shape[1], self.slices.shape[2]

    def segment_anchor(
        self,
        prompt: Prompt,
        previous: Any | None,
        current_mask: np.ndarray | None,
        neighbour_mask: np.ndarray | None = None,
        mask_source: BoxChainAnchor | None = None,
    ) -> tuple[np.ndarray, BoxChainAnchor]:
        """The merged prompt decides the anchor's mask (LiteMedSAM has no memory). Clicks alone on a
        slice that has a mask (propagated there, or from earlier clicks) refine that mask, as SAM 2
        feeds a frame's earlier logits with new clicks: LiteMedSAM, trained on boxes, gets the mask's
        box (grown to take in positive clicks) and the mask as its dense input. Positive clicks on a
        slice without a mask, inside the box a run would take from the slice beside it (where a run
        stopped short), get that box: a click alone is ambiguous to a box model (on the CT lesions it
        gave masks ten times the lesion, which propagation then carried on).

        Background clicks alone keep the object's look (the embedding inside its mask, which runs
        compare each slice with) from `mask_source`: they mark a leak, and the leak left in the
        refined mask would otherwise let runs from this slice follow the leaked structure on (on a
        CT lesion they carried it two slices past the lesion's end, where the first run had stopped)."""
        box, dense = prompt.box, prompt.mask
        if box is None and dense is None and current_mask is not None and current_mask.any():
            box, dense = box_around(current_mask, prompt), current_mask
        elif box is None and dense is None and neighbour_mask is not None and neighbour_mask.any():
            box = self._continued_box(neighbour_mask, prompt)
        if box is None and dense is None and 1 not in prompt.labels:
            raise InputError(
                f"prompt on slice {prompt.slice_index} (object {prompt.obj_id}): background clicks alone mark "
                "no object; add a box or a click on the object"
            )
        embedding = self.embeddings.get(prompt.slice_index)
        if dense is not None and box is None and not prompt.points:
            mask, seed = dense, self.predictor.mask_to_low_res_logits(dense)
        else:
            prediction = self.predictor.predict(
                embedding,
                self.slice_hw,
                box=box,
                points=np.asarray(prompt.points, dtype=float).reshape(-1, 2) if prompt.points else None,
                labels=np.asarray(prompt.labels, dtype=int) if prompt.points else None,
                mask_logits=None if dense is None else self.predictor.mask_to_low_res_logits(dense),
            )
            mask, seed = prediction.logits > 0, prediction.low_res_logits
        if prompt.only_background and mask_source is not None:
            feature = mask_source.feature
        else:
            feature = self.predictor.object_feature(embedding, mask) if mask.any() else np.zeros(0)
        return mask, BoxChainAnchor(seed, feature, mask)

    def follow(self, runs: list[Run]) -> Iterator[tuple[Run, int, np.ndarray | None]]:
        for run in runs:
            done = 0
            for done, (index, logits) in enumerate(self._follow(run.conditioning[run.anchor], run.slices), start=1):
                yield run, index, logits
            left = run.slices[done:]
            ahead = [index for index in run.conditioning if index != run.anchor]
            if left and ahead:
                # The object is on both anchors, so it does not end between them: where this run lost
                # it (a small or poor anchor mask), the slices left are followed from the other anchor
                # (unless the object was erased there: then nothing is followed from it).
                towards = range(ahead[0] - run.step, left[0] - run.step, -run.step)
                filled = {index: logits for index, logits in self._follow(run.conditioning[ahead[0]], towards) if index in left}
            else:
                filled = {}
            for index in left:
                yield run, index, filled.get(index)

    def _follow(self, anchor: BoxChainAnchor, covered: range) -> Iterator[tuple[int, np.ndarray]]:
        """Logits slice by slice along `covered`, until the object vanishes."""
        config = self.config
        if not anchor.mask.any():  # an erased slice: the object is not there to follow
            return
        previous_mask, previous_logits = anchor.mask, anchor.seed
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
            if cosine_similarity(self.predictor.object_feature(embedding, mask), anchor.feature) < config.min_similarity:
                return
            yield index, prediction.logits
            previous_mask, previous_logits = mask, prediction.low_res_logits

    def _continued_box(self, neighbour_mask: np.ndarray, prompt: Prompt) -> tuple[float, float, float, float] | None:
        """The box a run would take from `neighbour_mask`, if `prompt`'s positive clicks (one at least)
        lie in it: they continue the object there. None for clicks elsewhere (another structure)."""
        x1, y1, x2, y2 = self._box_around(neighbour_mask)
        positive = [(x, y) for (x, y), label in zip(prompt.points, prompt.labels) if label == 1]
        inside = all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in positive)
        return (x1, y1, x2, y2) if positive and inside else None

    def _box_around(self, mask: np.ndarray) -> tuple[float, float, float, float]:
        """The mask's box grown by the configured margin (a fraction of its size, at least
        `min_box_margin`), clipped to the slice."""
        config = self.config
        x1, y1, x2, y2 = box_from_mask(mask)
        margin = (max(config.box_margin * (x2 - x1), config.min_box_margin), max(config.box_margin * (y2 - y1), config.min_box_margin))
        return box_from_mask(mask, margin)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
