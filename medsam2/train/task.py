"""What the training loop needs from a model family: the per-model *task*.

The loop (`medsam2.train.trainer`) owns everything generic: distribution, the optimizer and its
schedule, accumulation, clipping, precision, checkpoints, validation through the engine, logs. A
task owns what depends on the model: the network, how a training sample is drawn and prompted,
the forward pass and its losses. Two exist: `LiteMedSAMTask` (2D slices with box prompts) and
`SAM2Task` (clips of consecutive slices through the memory path).

Samples are a pure function of (seed, global sample index): the loop hands each process the indices
of its share of every step, DistributedSampler-style, so a resumed run draws exactly the samples the
uninterrupted run would have drawn, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from torch import nn

from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.tracking import TrackingPredictor
from medsam2.train.config import LossConfig
from medsam2.train.data import CaseData


class TrainingTask(Protocol):
    model_name: str  # what `medsam2 segment --model` will find in the checkpoint
    loss_terms: tuple[str, ...]  # the keys of step_module's output, "loss" first
    network: nn.Module  # its state dict is the checkpoint's "model"
    step_module: nn.Module  # forward(batch) -> loss terms, "loss" the one to minimise; DDP wraps it

    def batch(self, indices: Sequence[int]) -> Any:
        """The micro-batch of these global sample indices, on the training device."""
        ...

    def predictor(self) -> SlicePredictor | TrackingPredictor:
        """The network (switched to eval mode) behind the engine's interface, for validation."""
        ...


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of one training sample."""
    return np.random.default_rng([seed, index])


def pick_object(cases: Sequence[CaseData], rng: np.random.Generator) -> tuple[CaseData, int]:
    """A case, then one of its objects, each uniformly: small cases and rare objects are seen as
    often as large ones."""
    case = cases[int(rng.integers(len(cases)))]
    labels = sorted(case.objects)
    return case, labels[int(rng.integers(len(labels)))]


def jitter_box(
    box: np.ndarray, rng: np.random.Generator, ratio: float, limit: float, content_hw: tuple[int, int]
) -> np.ndarray:
    """A (4,) x_min, y_min, x_max, y_max box in model pixels with each corner coordinate moved by
    up to min(ratio x the box's side, limit) either way (SAM 2's box noise), kept in the content."""
    sides = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float64)
    noisy = box + rng.uniform(-1.0, 1.0, 4) * np.minimum(ratio * sides, limit)
    high = np.array([content_hw[1] - 1, content_hw[0] - 1] * 2, dtype=np.float64)
    noisy = np.clip(noisy, 0.0, high)
    return np.array([min(noisy[0], noisy[2]), min(noisy[1], noisy[3]), max(noisy[0], noisy[2]), max(noisy[1], noisy[3])])


def clicks_inside(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) x, y of pixels drawn uniformly from the (H, W) mask."""
    rows, cols = np.nonzero(mask)
    chosen = rng.choice(len(rows), size=count, replace=len(rows) < count)
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.float64)


class StepModule(nn.Module):
    """Base of the tasks' `step_module`s: the network, the loss weights, and training mode that
    leaves two things in eval mode. BatchNorms: with the few samples per device that fit in
    fine-tuning, batch statistics are noise, so the pretrained running statistics are used and
    kept. A frozen image encoder: it must compute exactly what was cached from it."""

    def __init__(self, model: nn.Module, weights: LossConfig, freeze_image_encoder: bool) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.freeze_image_encoder = freeze_image_encoder

    def train(self, mode: bool = True) -> StepModule:
        super().train(mode)
        for child in self.model.modules():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                child.eval()
        if self.freeze_image_encoder:
            self.model.image_encoder.eval()
        return self
