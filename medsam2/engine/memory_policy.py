"""The confidence-weighted memory bank of Medical SAM 2: which earlier predictions a frame attends to.

SAM 2's own bank (`medsam2.engine.memory.MemoryBank`) holds the frames just before the current one,
which assumes that neighbours look alike and that recent predictions are right. Where neither holds
(one-prompt segmentation of unordered images: other patients, shuffled slices) Medical SAM 2 keeps
the *reliable* predictions instead and prefers those whose image resembles the current one.

The rule, exactly:

1. Confidence of a prediction: ``c = IoU * sigmoid(s)``, the decoder's predicted IoU of the mask it
   chose (clipped to [0, 1]) times the sigmoid of its object-score logit ``s``; ``c`` lies in [0, 1].
2. Admission: a prediction enters the bank only if ``c >= min_confidence``. The bank holds at most
   ``capacity`` (K) predictions; a newcomer beyond that replaces the least confident entry if it is
   strictly more confident, and is dropped otherwise (among equally confident entries the newest
   is replaced first, so the bank never changes on a tie).
3. Keys: an image's key is its image embedding (C, h, w) average-pooled to ``key_grid`` x
   ``key_grid``, centred (its mean over the pooled map subtracted per channel), flattened and
   L2-normalised; the similarity of two images is the dot product of their keys (a cosine).
4. Selection: the conditioning memories (the reference image, the prompted frames) are always
   attended to. Of the bank, the ``attend`` entries of highest weight ``w = c * max(sim, 0)`` are
   chosen (``w = c`` with ``similarity=False``), equal weights in admission order; an entry of
   weight 0 (an image unlike the current one) is never attended to. The chosen take SAM 2's
   recent-frame places by rank: the heaviest the memory slot and object-pointer distance of the
   previous frame, the next those of two frames back, and so on, so the model leans most on the most
   similar confident memory. Conditioning pointers count as one frame away.

Order matters only through admission: a target's result depends on the predictions admitted before
it, never on those after it.

Used by one-prompt segmentation (`medsam2.engine.one_prompt`: the reference image is the
conditioning memory) and, with `PropagationConfig(memory="confidence")` (`medsam2 segment --memory
confidence`), by ordinary propagation through a volume or video: each run's bank holds its anchor
(and the next anchor ahead) as conditioning memories and admits the run's own slices by the rule.
Unlike SAM 2's bank, conditioning pointers then count one slice away whatever their distance, and
a far slice may be attended to where it is confident and alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F

from medsam2.engine.memory import MemoryEntry, MemorySelection
from medsam2.errors import InputError
from medsam2.models.sam2 import FrameFeatures, FrameOutput

T = TypeVar("T")


@dataclass(frozen=True)
class ConfidenceBankConfig:
    """Settings of the confidence-weighted bank (see the module's rule)."""

    capacity: int = 16  # K: admitted predictions kept
    min_confidence: float = 0.7  # predicted IoU x object probability needed to enter
    attend: int = 6  # bank entries a frame attends to besides the conditioning memories
    similarity: bool = True  # weight by image similarity as well as confidence
    key_grid: int = 8  # side of the pooled embedding an image key is made from

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.attend < 1 or self.key_grid < 1:
            raise InputError(
                f"memory bank: capacity ({self.capacity}), attend ({self.attend}) and key grid ({self.key_grid}) must be >= 1"
            )
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"memory bank: minimum confidence {self.min_confidence} must lie within 0..1")


def prediction_confidence(iou: float, object_score_logit: float) -> float:
    """Rule 1: predicted IoU times the probability that the object is present."""
    return min(max(float(iou), 0.0), 1.0) * float(torch.sigmoid(torch.tensor(float(object_score_logit))))


def output_confidence(output: FrameOutput) -> float:
    """Rule 1 for a SAM 2 frame of one object: its chosen mask's predicted IoU (the best of the
    decoded masks, the one SAM 2 keeps) and its object score."""
    return prediction_confidence(float(output.ious.max()), float(output.object_score_logits.max()))


def image_key(embedding: torch.Tensor, grid: int = ConfidenceBankConfig.key_grid) -> torch.Tensor:
    """Rule 3: the key (C * grid * grid,) of an image embedding (1, C, h, w) or (C, h, w)."""
    pooled = F.adaptive_avg_pool2d(embedding.float().reshape(-1, *embedding.shape[-2:]), grid)
    centred = pooled - pooled.mean(dim=(-2, -1), keepdim=True)
    return F.normalize(centred.flatten(), dim=0)


@dataclass(frozen=True)
class BankedMemory(Generic[T]):
    """One admitted prediction: what the model needs of it, and what the policy ranks it by."""

    memory: T
    confidence: float
    key: torch.Tensor
    order: int  # admission order, for ties


class ConfidenceBank(Generic[T]):
    """Rules 2 and 4 for memories of any kind: admission and weighted selection."""

    def __init__(self, config: ConfidenceBankConfig | None = None) -> None:
        self.config = config or ConfidenceBankConfig()
        self.entries: list[BankedMemory[T]] = []
        self._admitted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def offer(self, memory: T, confidence: float, key: torch.Tensor) -> bool:
        """Admit `memory` if rule 2 lets it in; whether it was."""
        if confidence < self.config.min_confidence:
            return False
        if len(self.entries) >= self.config.capacity:
            weakest = min(self.entries, key=lambda entry: (entry.confidence, -entry.order))
            if confidence <= weakest.confidence:
                return False
            self.entries.remove(weakest)
        self.entries.append(BankedMemory(memory, confidence, key.detach(), self._admitted))
        self._admitted += 1
        return True

    def weight(self, entry: BankedMemory[T], key: torch.Tensor) -> float:
        """Rule 4's weight of `entry` for an image with `key`."""
        if not self.config.similarity:
            return entry.confidence
        similarity = float(torch.dot(entry.key.to(key.device), key))
        return entry.confidence * max(similarity, 0.0)

    def select(self, key: torch.Tensor) -> list[BankedMemory[T]]:
        """The entries an image with `key` attends to, heaviest first."""
        weighted = [(self.weight(entry, key), entry) for entry in self.entries]
        ranked = sorted((item for item in weighted if item[0] > 0), key=lambda item: (-item[0], item[1].order))
        return [entry for _, entry in ranked[: self.config.attend]]


class ConfidenceMemoryBank:
    """SAM 2 memories under the confidence rule: the conditioning entries plus a `ConfidenceBank`.

    The counterpart of `MemoryBank` (recent frames) for the memory-attention models, called the
    same way with the frame's features and output added: `select` gives the `MemorySelection`
    that `SAM2Model.memory_tokens` takes for a frame, `add` offers the frame's memory once the
    frame is decoded."""

    def __init__(
        self,
        conditioning: list[MemoryEntry],
        config: ConfidenceBankConfig | None = None,
        num_maskmem: int = 7,
        max_obj_ptrs: int = 16,
    ) -> None:
        config = config or ConfidenceBankConfig()
        if config.attend > num_maskmem - 1:
            raise InputError(f"memory bank: attend {config.attend} exceeds the model's {num_maskmem - 1} recent-frame slots")
        self.conditioning = list(conditioning)
        self.bank: ConfidenceBank[MemoryEntry] = ConfidenceBank(config)
        self.num_maskmem = num_maskmem
        self.max_pointer_distance = max_obj_ptrs - 1

    def key(self, features: FrameFeatures) -> torch.Tensor:
        return image_key(features.top, self.bank.config.key_grid)

    def add(self, entry: MemoryEntry, output: FrameOutput, features: FrameFeatures) -> bool:
        """Offer a decoded frame's memory to the bank (rule 2); whether it was admitted."""
        return self.bank.offer(entry, output_confidence(output), self.key(features))

    def select(self, frame: int, features: FrameFeatures) -> MemorySelection:
        """The memories for a frame with these features (rule 4); `frame` is not used: this bank
        ranks memories by confidence and similarity, not by distance."""
        chosen = [banked.memory for banked in self.bank.select(self.key(features))]
        spatial = [(entry.features, 0) for entry in self.conditioning]
        spatial += [(entry.features, self.num_maskmem - rank) for rank, entry in enumerate(chosen, start=1)]
        pointers = [(entry.pointer, 1) for entry in self.conditioning]
        pointers += [(entry.pointer, rank) for rank, entry in enumerate(chosen, start=1)]
        return MemorySelection(spatial, pointers, self.max_pointer_distance)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the bank holds (to check that it stays bounded)."""
        entries = [*self.conditioning, *(banked.memory for banked in self.bank.entries)]
        return [t for entry in entries for t in (entry.features, entry.pointer) if t is not None]
