"""Fine-tuning LiteMedSAM on 2D slices drawn from the cases.

A sample is one object on one slice where it is present: case, object and slice drawn uniformly in
that order. Its prompt is the object's bounding box with SAM 2's box noise, plus (optionally) clicks
inside the object. The slice goes through the model's own input transform (`LongestSideResize`);
the mask is compared with the object at the decoder's 256x256 output. With the image encoder
frozen, a slice's embedding never changes, so each is computed once, by the engine's encoder (fused
by oneDNN on the CPU, faster than torch's autograd-ready modules; one slice at a time, so the value
does not depend on which batch first needed it), and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medsam2.engine.models import LiteMedSAMPredictor
from medsam2.engine.prompts import box_from_mask
from medsam2.models.lite_medsam import LiteMedSAM, load_lite_medsam
from medsam2.models.prompt_encoder import NOT_A_POINT
from medsam2.preprocess.resize import LongestSideResize
from medsam2.train.config import TrainConfig
from medsam2.train.data import CaseData
from medsam2.train.losses import mask_losses
from medsam2.train.task import (
    StepModule,
    clicks_inside,
    jitter_box,
    pick_object,
    sample_rng,
)


@dataclass
class SliceBatch:
    """Prompts and targets in the model's 256x256 pixel space."""

    boxes: torch.Tensor  # (B, 4) x_min, y_min, x_max, y_max
    targets: torch.Tensor  # (B, 1, 256, 256) {0, 1}
    images: torch.Tensor | None = None  # (B, 3, 256, 256) model input, when the encoder trains
    embeddings: torch.Tensor | None = None  # (B, 256, 64, 64), when it is frozen
    points: torch.Tensor | None = None  # (B, N, 2) x, y
    point_labels: torch.Tensor | None = None  # (B, N): 1 object, -1 padding


class LiteMedSAMStep(StepModule):
    """One forward pass and its losses; the module DDP wraps."""

    model: LiteMedSAM

    def forward(self, batch: SliceBatch) -> dict[str, torch.Tensor]:
        embeddings = batch.embeddings if batch.images is None else self.model.encode_image(batch.images)
        logits, iou = self.model.decode(
            embeddings, boxes=batch.boxes, points=batch.points, point_labels=batch.point_labels
        )
        return mask_losses(logits, batch.targets, iou, self.weights)


class LiteMedSAMTask:
    """`TrainingTask` of the embedded LiteMedSAM (or a fine-tuned LiteMedSAM checkpoint)."""

    model_name = "lite-medsam"
    loss_terms = ("loss", "dice", "bce", "iou")

    def __init__(self, config: TrainConfig, cases: Sequence[CaseData], device: torch.device) -> None:
        self.config = config
        self.cases = list(cases)
        self.device = device
        self.network = load_lite_medsam(config.model.checkpoint, device=device, optimize=False)
        self.transform = LongestSideResize(self.network.image_size)
        self.frozen = config.model.freeze_image_encoder
        self._encoder: LiteMedSAMPredictor | None = None
        if self.frozen:
            self.network.image_encoder.requires_grad_(False)
            self._encoder = LiteMedSAMPredictor(self.network, device)  # made in eval mode, as loaded
        self.step_module = LiteMedSAMStep(self.network, config.loss, self.frozen).to(device)
        self._embeddings: dict[tuple[str, int], torch.Tensor] = {}

    def batch(self, indices: Sequence[int]) -> SliceBatch:
        samples = [self._sample(index) for index in indices]
        boxes = torch.tensor(np.stack([s[2] for s in samples]), dtype=torch.float32)
        targets = torch.stack([self.transform.mask_to_model(s[3]) for s in samples])[:, None]
        points, point_labels = self._clicks([s[4] for s in samples])
        batch = SliceBatch(boxes.to(self.device), targets.to(self.device))
        if points is not None:
            batch.points, batch.point_labels = points.to(self.device), point_labels.to(self.device)
        if self.frozen:
            batch.embeddings = torch.cat([self._embedding(case, index) for case, index, *_ in samples])
        else:
            images = np.stack([case.slices[index] for case, index, *_ in samples])
            batch.images = self.transform.prepare_batch(images, self.device)
        return batch

    def _sample(self, index: int) -> tuple[CaseData, int, np.ndarray, np.ndarray, np.ndarray | None]:
        """(case, slice, jittered box in model pixels, (H, W) object mask, clicks in model pixels)."""
        rng = sample_rng(self.config.training.seed, index)
        case, label = pick_object(self.cases, rng)
        slice_index = int(rng.choice(case.objects[label]))
        mask = case.labels[slice_index] == label
        hw = mask.shape
        box = self.transform.box_to_model(np.asarray(box_from_mask(mask)), hw)
        prompts = self.config.prompts
        box = jitter_box(box, rng, prompts.box_noise, prompts.box_noise_max, self.transform.content_hw(hw))
        clicks = None
        if rng.random() < prompts.point_probability:
            clicks = self.transform.points_to_model(clicks_inside(mask, prompts.num_points, rng), hw)
        return case, slice_index, box, mask, clicks

    @staticmethod
    def _clicks(clicks: list[np.ndarray | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, N, 2) points and (B, N) labels, samples without clicks padded; None if no sample has any."""
        count = max((len(c) for c in clicks if c is not None), default=0)
        if count == 0:
            return None, None
        points = torch.zeros(len(clicks), count, 2)
        labels = torch.full((len(clicks), count), NOT_A_POINT, dtype=torch.long)
        for row, sample in enumerate(clicks):
            if sample is not None:
                points[row, : len(sample)] = torch.from_numpy(sample).float()
                labels[row, : len(sample)] = 1
        return points, labels

    @torch.no_grad()
    def _embedding(self, case: CaseData, index: int) -> torch.Tensor:
        key = (case.id, index)
        if key in self._embeddings:
            return self._embeddings[key]
        # A clone leaves inference mode: the decoder's autograd may save it for the backward pass.
        embedding = self._encoder.encode(case.slices[index : index + 1])[0].clone()
        if len(self._embeddings) < self.config.data.embedding_cache_slices:
            self._embeddings[key] = embedding
        return embedding

    def predictor(self) -> LiteMedSAMPredictor:
        self.network.eval()
        # Unfused: each validation sees new weights, and a fusion of them would stay in memory for
        # the rest of the run (medsam2.models.onednn_fusion).
        return LiteMedSAMPredictor(self.network, self.device, fuse=False)
