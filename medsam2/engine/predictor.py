"""The small interface between the engine and a promptable 2D model.

The engine never touches network modules: it hands uint8 slices to a `SlicePredictor` to get
embeddings, and prompts plus an embedding to get logits at slice resolution; the session follows
objects with such a predictor by the box chain (`medsam2.engine.box_chain`). Models with a memory
(SAM 2.1, MedSAM2) are `TrackingPredictor`s instead and bring their own tracker
(`medsam2.engine.tracking`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class SlicePrediction:
    """A model's answer on one slice."""

    logits: np.ndarray  # (H, W) float32 at slice resolution; object where > 0
    low_res_logits: Any  # model-space logits, fed back as the dense prompt on the next slice
    score: float  # the model's predicted IoU of this mask


class SlicePredictor(Protocol):
    """What the propagation engine needs from a promptable 2D model."""

    def encode(self, slices: np.ndarray) -> list[Any]:
        """Embeddings of a batch of uint8 slices, (N, H, W) or (N, H, W, 3)."""
        ...

    def predict(
        self,
        embedding: Any,
        image_hw: tuple[int, int],
        box: tuple[float, float, float, float] | None = None,
        points: np.ndarray | None = None,  # (N, 2) x, y in slice pixels
        labels: np.ndarray | None = None,  # (N,) 1 object / 0 background
        mask_logits: Any | None = None,  # a previous `low_res_logits`
    ) -> SlicePrediction:
        ...

    def object_feature(self, embedding: Any, mask: np.ndarray) -> np.ndarray:
        """The embedding averaged over an (H, W) mask: what the object looks like to the model."""
        ...

    def mask_to_low_res_logits(self, mask: np.ndarray) -> Any:
        """A user-given (H, W) mask as model-space logits, to seed propagation."""
        ...
