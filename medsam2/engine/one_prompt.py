"""One-prompt segmentation: one annotated reference image, the same kind of structure found in any
number of other images that need not be related to it or to each other (other patients, other
studies, slices in any order).

Two ways, by model family:

- **LiteMedSAM** (no memory; training-free, in the spirit of PerSAM). The reference's image
  embedding, centred (its mean over the image subtracted), averaged inside the reference mask is the
  *object prototype*; averaged over a ring around the mask, the *context prototype*. On a target,
  the cosine similarity of every embedding cell to the object prototype is a map whose strongest
  local maxima are candidate locations; around each, square boxes of several sizes (multiples of
  the reference object's side) are decoded (with `points`, also PerSAM's clicks: a positive one on
  the box's location, a negative one on the similarity map's minimum). Each candidate mask is
  scored by how much its own object and context features resemble the prototypes, and the best is
  kept; the refinement pass decodes it once more from its own tight box (with the same clicks, and
  with `refine_mask` the kept mask's low-resolution logits as the dense prompt). Clicks and dense
  prompt are off by default: they measured worse. Each target is segmented on its own: results do
  not depend on the order of the targets.
- **SAM 2.1 / MedSAM2** (memory attention). The reference image and mask are a conditioning memory;
  each target attends to it and to the most confident earlier predictions, chosen and ranked by the
  confidence-weighted bank (`medsam2.engine.memory_policy`, whose docstring gives the exact rule).
  A target's result depends on the predictions admitted before it, so on the order, and only so.

Confidence of a result: for LiteMedSAM, the decoder's predicted IoU times the cosine similarity of
the mask's object feature to the prototype (both clipped to [0, 1]); for SAM 2, the bank's
confidence (predicted IoU times object probability). Targets below `min_confidence` get an empty mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medsam2.engine.memory import MemoryEntry
from medsam2.engine.memory_policy import (
    ConfidenceBankConfig,
    ConfidenceMemoryBank,
    output_confidence,
)
from medsam2.engine.models import LiteMedSAMPredictor
from medsam2.engine.prompts import Prompt, box_from_mask
from medsam2.engine.sam2_predictor import SAM2Predictor
from medsam2.errors import InputError
from medsam2.progress import leave_finished_bar
from medsam2.models.sam2 import FrameFeatures


@dataclass(frozen=True)
class OnePromptConfig:
    """How targets are segmented from the reference (LiteMedSAM settings first, then SAM 2's bank)."""

    candidate_peaks: int = 3  # local maxima of the similarity map tried as locations
    peak_separation: int = 3  # embedding cells (4 model pixels each) between two candidate locations
    box_scales: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)  # box side / reference object side
    context_weight: float = 0.25  # weight of the context (ring) similarity in a candidate's score
    context_width: int = 3  # embedding cells of the ring around a mask
    # PerSAM's location prior: a positive click on each candidate location and a negative one on
    # the similarity map's minimum go with every box. Off: LiteMedSAM learnt from boxes only, and
    # the clicks lower its DSC on benchmarks/one_prompt.py (README, One-prompt segmentation).
    points: bool = False
    refine: bool = True  # decode the chosen mask once more from its own box, grown by refine_margin
    refine_margin: float = 0.1  # fraction of the box's larger side added on each side
    # The refinement pass also gets the chosen mask's logits as the dense prompt (off: it measured
    # slightly worse than the box alone, as above).
    refine_mask: bool = False
    min_confidence: float = 0.0  # targets below get an empty mask
    bank: ConfidenceBankConfig = field(default_factory=ConfidenceBankConfig)

    def __post_init__(self) -> None:
        if self.candidate_peaks < 1 or self.peak_separation < 1 or self.context_width < 1 or not self.box_scales:
            raise InputError("one-prompt: candidate peaks, peak separation, context width and box scales must be positive")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"one-prompt: minimum confidence {self.min_confidence} must lie within 0..1")


@dataclass
class TargetResult:
    """The segmentation of one target."""

    mask: np.ndarray = field(repr=False)  # (H, W) bool, in the target's pixels
    confidence: float  # in [0, 1]; see the module's docstring
    predicted_iou: float  # the decoder's predicted IoU of the mask (as the CSV's column)


def check_image(image: object, what: str) -> None:
    """A one-line error unless `image` is what the models take: one uint8 (H, W) or (H, W, 3) array."""
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"{what}: expected a uint8 (H, W) or (H, W, 3) array, got a {type(image).__name__} "
            "(the slices of a Volume: medsam2.engine.api.prepare_slices(volume)[0])"
        )
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise InputError(f"{what}: expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")


def check_reference(reference: np.ndarray, reference_mask: np.ndarray, what: str = "reference") -> np.ndarray:
    """The reference mask as (H, W) bool; a one-line error if it is empty or does not fit the image."""
    check_image(reference, what)
    mask = np.asarray(reference_mask)
    if mask.shape != reference.shape[:2]:
        raise InputError(f"{what}: mask shape {mask.shape} differs from the image's {reference.shape[:2]}")
    if not mask.any():
        raise InputError(f"{what}: the reference mask is empty")
    return mask.astype(bool)


def reference_mask_from_box(
    reference: np.ndarray, box: tuple[float, float, float, float], predictor: LiteMedSAMPredictor | SAM2Predictor
) -> np.ndarray:
    """The (H, W) mask the model segments inside `box` (x1, y1, x2, y2) on the reference image."""
    height, width = reference.shape[:2]
    prompt = Prompt(0, 1, box=tuple(float(v) for v in box))
    prompt.validate(1, height, width, unit="image")
    if isinstance(predictor, SAM2Predictor):
        mask, _ = predictor.tracker(reference[None]).segment_anchor(prompt, None, None)
    else:
        mask = predictor.predict(predictor.encode(reference[None])[0], (height, width), box=prompt.box).logits > 0
    if not mask.any():
        raise InputError(f"reference box {list(box)}: the model found nothing inside it")
    return mask


class OnePromptSegmenter:
    """Segments targets, one call after another, from one reference; for SAM 2 the memory bank
    lives as long as the segmenter, so every call's targets enter the same bank."""

    def __init__(
        self,
        reference: np.ndarray,
        reference_mask: np.ndarray,
        predictor: LiteMedSAMPredictor | SAM2Predictor,
        config: OnePromptConfig | None = None,
    ) -> None:
        self.config = config or OnePromptConfig()
        self.predictor = predictor
        mask = check_reference(reference, reference_mask)
        if isinstance(predictor, SAM2Predictor):
            self._segmenter: _MemorySegmenter | _PrototypeSegmenter = _MemorySegmenter(reference, mask, predictor, self.config)
        else:
            self._segmenter = _PrototypeSegmenter(reference, mask, predictor, self.config)

    @property
    def bank(self) -> ConfidenceMemoryBank | None:
        """The memory bank (SAM 2.1 / MedSAM2); None for LiteMedSAM, which has none."""
        return self._segmenter.bank if isinstance(self._segmenter, _MemorySegmenter) else None

    def segment(self, targets: Sequence[np.ndarray], progress: bool = True, desc: str = "one-prompt") -> list[TargetResult]:
        """Results for uint8 images, (H, W) or (H, W, 3), each of any size, in the targets' order."""
        for index, target in enumerate(targets):
            check_image(target, f"target {index}")
        results = []
        encoded = _encoded(targets, self.predictor)
        for target, embedding in tqdm(encoded, total=len(targets), desc=desc, unit="image", disable=not progress, leave=leave_finished_bar()):
            result = self._segmenter.segment(target, embedding)
            if result.confidence < self.config.min_confidence:
                result.mask = np.zeros_like(result.mask)
            results.append(result)
        return results


def segment_one_prompt(
    reference: np.ndarray,
    reference_mask: np.ndarray,
    targets: Sequence[np.ndarray],
    predictor: LiteMedSAMPredictor | SAM2Predictor,
    config: OnePromptConfig | None = None,
    progress: bool = True,
) -> list[TargetResult]:
    """Segment in every target what `reference_mask` marks on `reference` (uint8 images, (H, W) or
    (H, W, 3), each of any size); results come in the targets' order."""
    return OnePromptSegmenter(reference, reference_mask, predictor, config).segment(targets, progress)


def _encoded(targets: Sequence[np.ndarray], predictor: LiteMedSAMPredictor | SAM2Predictor) -> Iterator[tuple[np.ndarray, object]]:
    """(target, embedding) in order; runs of same-shaped targets are encoded in batches."""
    start = 0
    while start < len(targets):
        stop = start + 1
        while stop < len(targets) and stop - start < predictor.encode_batch and targets[stop].shape == targets[start].shape:
            stop += 1
        chunk = list(targets[start:stop])
        yield from zip(chunk, predictor.encode(np.stack(chunk)))
        start = stop


# -- LiteMedSAM: prototype matching ------------------------------------------------------------


@dataclass(frozen=True)
class _Prototype:
    object: torch.Tensor  # (C,) centred embedding averaged inside the mask
    context: torch.Tensor  # (C,) ... over the ring around it
    side: float  # side of a square of the mask's area, in model pixels


# Labels of the clicks that go with each candidate box: its location, then the similarity minimum.
_CLICK_LABELS = torch.tensor([[1, 0]])


class _PrototypeSegmenter:
    def __init__(
        self, reference: np.ndarray, mask: np.ndarray, predictor: LiteMedSAMPredictor, config: OnePromptConfig
    ) -> None:
        self.predictor = predictor
        self.config = config
        embedding = predictor.encode(reference[None])[0]
        grid = self._content(embedding, mask.shape)
        weights = F.interpolate(torch.from_numpy(mask).float()[None, None], size=grid.shape[-2:], mode="area")[:, 0]
        objects, contexts = self._features(grid, weights)
        self.cell = predictor.model.image_size / embedding.shape[-1]  # model pixels per embedding cell
        self.prototype = _Prototype(objects[0], contexts[0], float(weights.sum().sqrt()) * self.cell)

    def _content(self, embedding: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) embedding cells that cover the image (not the padding), centred."""
        height, width = self.predictor.transform.content_on_grid(image_hw, embedding.shape[-1])
        cells = embedding[0, :, :height, :width].float()
        return cells - cells.mean(dim=(-2, -1), keepdim=True)

    def _features(self, grid: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object and context features (N, C) of N soft masks (N, h, w) on the grid."""
        width = self.config.context_width
        inside = (weights > 0.3).float()[:, None]
        ring = (F.max_pool2d(inside, 2 * width + 1, 1, width) - F.max_pool2d(inside, 3, 1, 1))[:, 0]

        def mean(w: torch.Tensor) -> torch.Tensor:
            return torch.einsum("nhw,chw->nc", w, grid) / w.sum(dim=(-2, -1))[:, None].clamp(min=1e-6)

        return mean(weights), mean(ring)

    @torch.inference_mode()
    def segment(self, target: np.ndarray, embedding: torch.Tensor) -> TargetResult:
        predictor, config, prototype = self.predictor, self.config, self.prototype
        image_hw = target.shape[:2]
        grid = self._content(embedding, image_hw)
        similarity = torch.einsum("chw,c->hw", F.normalize(grid, dim=0), F.normalize(prototype.object, dim=0))
        boxes, clicks = self._candidates(similarity)
        device = predictor.device
        points, labels = (None, None) if clicks is None else (clicks.to(device), _CLICK_LABELS.expand(len(clicks), -1).to(device))
        low_res, iou = predictor.model.decode(embedding, boxes=boxes.to(device), points=points, point_labels=labels)
        low_res, iou = low_res[:, 0].cpu(), iou[:, 0].cpu()
        score, object_similarity = self._scores(grid, low_res, low_res.shape[-1] // embedding.shape[-1])
        best = int(torch.argmax(score))
        logits, predicted_iou = low_res[best], float(iou[best])
        if config.refine:
            found = (logits > 0).numpy()
            margin = config.refine_margin * max(found.any(axis=0).sum(), found.any(axis=1).sum())
            tight = box_from_mask(found, margin)
            if tight is not None:
                refined, refined_iou = predictor.model.decode(
                    embedding,
                    boxes=torch.tensor([tight], dtype=torch.float32, device=device),
                    points=None if points is None else points[best : best + 1],
                    point_labels=None if labels is None else labels[best : best + 1],
                    mask_logits=logits[None, None].to(device) if config.refine_mask else None,
                )
                logits, predicted_iou = refined[0, 0].cpu(), float(refined_iou[0, 0])
        mask = predictor.transform.logits_to_image(logits, image_hw).numpy() > 0
        confidence = min(max(predicted_iou, 0.0), 1.0) * max(float(object_similarity[best]), 0.0)
        return TargetResult(mask, confidence, predicted_iou)

    def _candidates(self, similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 4) boxes in model pixels, squares of each scale around each candidate location, and
        with `points` their (N, 2, 2) clicks: the box's location, then the similarity minimum."""
        config = self.config
        size = 2 * config.peak_separation + 1
        local_max = F.max_pool2d(similarity[None, None], size, 1, config.peak_separation)[0, 0]
        rows, cols = torch.nonzero(similarity >= local_max, as_tuple=True)
        order = torch.argsort(similarity[rows, cols], descending=True, stable=True)[: config.candidate_peaks]
        cell = self.cell
        height, width = similarity.shape
        centres = torch.stack([cols[order], rows[order]], dim=1).float().add(0.5).mul(cell)  # (P, 2) x, y
        half = torch.tensor(config.box_scales) * self.prototype.side / 2  # (S,)
        limit = torch.tensor([width * cell - 1, height * cell - 1])
        low = (centres[:, None, :] - half[None, :, None]).clamp(min=torch.zeros(2), max=limit)
        high = (centres[:, None, :] + half[None, :, None]).clamp(min=torch.zeros(2), max=limit)
        boxes = torch.cat([low, high], dim=-1).reshape(-1, 4)
        if not config.points:
            return boxes, None
        lowest = int(torch.argmin(similarity))
        negative = torch.tensor([lowest % width + 0.5, lowest // width + 0.5]) * cell
        clicks = torch.stack([centres, negative.expand_as(centres)], dim=1)  # (P, 2, 2)
        return boxes, clicks.repeat_interleave(len(half), dim=0)

    def _scores(self, grid: torch.Tensor, low_res: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's score and the object similarity it includes; `cell`: low-res pixels per
        embedding cell."""
        height, width = grid.shape[-2:]
        masks = (low_res[:, : height * cell, : width * cell] > 0).float()
        weights = F.avg_pool2d(masks[:, None], cell)[:, 0]
        objects, contexts = self._features(grid, weights)
        object_similarity = F.cosine_similarity(objects, self.prototype.object[None], dim=1)
        context_similarity = F.cosine_similarity(contexts, self.prototype.context[None], dim=1)
        score = object_similarity + self.config.context_weight * context_similarity
        return torch.where(weights.sum(dim=(-2, -1)) > 0, score, torch.tensor(-torch.inf)), object_similarity


# -- SAM 2.1 / MedSAM2: memory attention over the confidence-weighted bank ----------------------


class _MemorySegmenter:
    def __init__(self, reference: np.ndarray, mask: np.ndarray, predictor: SAM2Predictor, config: OnePromptConfig) -> None:
        self.predictor = predictor
        self.model = predictor.model
        _, anchor = predictor.tracker(reference[None]).segment_anchor(Prompt(0, 1, mask=mask), None, None)
        self.bank = ConfidenceMemoryBank(
            [anchor.memory], config.bank, self.model.config.num_maskmem, self.model.config.max_obj_ptrs
        )
        self.count = 0

    @torch.inference_mode()
    def segment(self, target: np.ndarray, features: FrameFeatures) -> TargetResult:
        selection = self.bank.select(self.count, features)
        with self.predictor.autocast():
            output, memory = self.model.track(features, selection.for_model())
        # SAM 2 keeps spatial memories in bfloat16, whatever the compute precision.
        self.bank.add(MemoryEntry(self.count, memory.to(torch.bfloat16), output.obj_ptr), output, features)
        self.count += 1
        logits = self.predictor.transform.logits_to_image(output.low_res_masks[0, 0].float(), target.shape[:2])
        return TargetResult((logits > 0).cpu().numpy(), output_confidence(output), float(output.ious.max()))
