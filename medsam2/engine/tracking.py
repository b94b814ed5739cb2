"""How a session follows objects from their prompted slices: the interface between the generic
session (prompts, anchors, runs, corrections) and a model family's way of propagating.

A *run* is the stretch of slices one anchor covers in one direction: from the anchor up to half-way
to the next anchor of the same object, or to the end of the stack. A run depends on its own anchor
and on the next anchor ahead of it (a memory model attends to both); the session recomputes a run
when either changes. A `Tracker` segments anchors and follows runs; each model family supplies one:
the box chain for 2D models such as LiteMedSAM (`medsam2.engine.box_chain`), the memory bank for
SAM 2.1 / MedSAM2 (`medsam2.engine.sam2_predictor`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from medsam2.engine.cache import EmbeddingCache
from medsam2.engine.memory_policy import ConfidenceBankConfig
from medsam2.engine.prompts import Prompt, number_within
from medsam2.errors import InputError

MemoryPolicy = Literal["recent", "confidence"]
MEMORY_POLICIES: tuple[MemoryPolicy, ...] = ("recent", "confidence")


@dataclass(frozen=True)
class PropagationConfig:
    """How an object is followed from slice to slice.

    `prefetch` and `cache_slices` apply to every model; the rest steers the box chain of 2D models
    (a memory model such as SAM 2.1 follows the object through its memory instead)."""

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
    # Memory models only: the frames just before ("recent", SAM 2's bank) or the most confident
    # earlier frames weighted by image similarity ("confidence", `medsam2.engine.memory_policy`).
    memory: MemoryPolicy = "recent"
    bank: ConfidenceBankConfig = field(default_factory=ConfidenceBankConfig)

    def __post_init__(self) -> None:
        # (low, high, whole) of each number: a NaN margin or a score above 1 stopped propagation at
        # its anchor without a word, a cache of 0 slices failed deep inside
        limits = {
            "box_margin": (0.0, 10.0, False), "min_box_margin": (0.0, 1e4, False), "min_area": (0, 1e9, True),
            "min_score": (0.0, 1.0, False), "min_similarity": (-1.0, 1.0, False), "prefetch": (1, 1024, True),
            "cache_slices": (1, 1e6, True),
        }
        for name, (low, high, whole) in limits.items():
            number = number_within(getattr(self, name), f"PropagationConfig.{name}", low, high, whole)
            object.__setattr__(self, name, int(number) if whole else number)
        if not isinstance(self.use_mask_prompt, bool | np.bool_):
            raise InputError(f"PropagationConfig.use_mask_prompt must be True or False, got {self.use_mask_prompt!r}")
        if not isinstance(self.bank, ConfidenceBankConfig):
            raise InputError(f"PropagationConfig.bank must be a ConfidenceBankConfig, not {type(self.bank).__name__}")
        if self.memory not in MEMORY_POLICIES:
            raise InputError(f"memory bank {self.memory!r}: choose {' or '.join(MEMORY_POLICIES)}")


@dataclass(frozen=True)
class Run:
    """One anchor's stretch of slices in one direction, and the anchors it depends on."""

    obj_id: int
    anchor: int
    step: int  # +1 towards higher slice indices, -1 towards lower
    slices: range  # in the order they are visited
    # What the tracker stored for the run's anchor and, if there is one, the next anchor ahead
    # (the run stops half-way to it), keyed by slice index.
    conditioning: dict[int, Any] = field(default_factory=dict)


class Tracker(Protocol):
    """A model family's way of segmenting prompted slices and following runs, for one stack."""

    config: PropagationConfig
    embeddings: EmbeddingCache

    def segment_anchor(
        self,
        prompt: Prompt,
        previous: Any | None,
        current_mask: np.ndarray | None,
        neighbour_mask: np.ndarray | None = None,
        mask_source: Any | None = None,
    ) -> tuple[np.ndarray, Any]:
        """The (H, W) bool mask of a prompted slice and what runs need from it later (opaque to the
        session). `previous` is what this call returned for the slice's earlier prompt, if any;
        `current_mask` the object's propagated mask there, if any (a correction refines it);
        `neighbour_mask`, where there is none, the object's masks on the adjacent slices (a 2D model
        takes the object's extent from them; a memory model may ignore it, its memory holds more);
        `mask_source`, for a prompt of background clicks alone, what this call returned for the
        anchor whose run made `current_mask` (the slice's own, if prompted): how the object looked
        where it was last shown."""
        ...

    def follow(self, runs: list[Run]) -> Iterator[tuple[Run, int, np.ndarray | None]]:
        """(run, slice index, (H, W) float32 logits, object where > 0) once for every slice of every
        run, each run in its own order; None where the run has stopped (the object has ended)."""
        ...


@runtime_checkable
class TrackingPredictor(Protocol):
    """A predictor that brings its own tracker (memory models); plain `SlicePredictor`s get the box chain."""

    def tracker(self, slices: np.ndarray, config: PropagationConfig | None) -> Tracker: ...
