"""The memory bank of one run: which earlier frames a SAM 2 frame attends to.

Policy (SAM 2's at inference, which MedSAM2 keeps): the conditioning (prompted) frames are always in
the bank; so are the spatial memories of the `num_maskmem - 1` frames just before the current one in
the run's direction, and the object pointers of the `max_obj_ptrs - 1` frames before it plus those of
the conditioning frames already passed. Nothing older is kept, so a run of any length holds at most
`len(conditioning) + num_maskmem - 1` spatial memories and `len(conditioning) + max_obj_ptrs - 1`
pointers. Another policy (e.g. one weighting memories by confidence) replaces this class.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from medsam2.models.sam2 import SelectedMemory
from medsam2.transfer import to_device


@dataclass
class MemoryEntry:
    """What one frame leaves in the bank."""

    frame: int
    features: torch.Tensor | None  # (B, C_mem, h, w) spatial memory, stored in bfloat16 as SAM 2 does
    pointer: torch.Tensor  # (B, C) object pointer


@dataclass
class MemorySelection:
    """The memories one frame attends to, in the order the model takes them."""

    spatial: list[tuple[torch.Tensor, int]]  # (memory, slot): 0 for conditioning frames, num_maskmem - k for k frames back
    pointers: list[tuple[torch.Tensor, int]]  # (pointer, distance in frames)
    max_pointer_distance: int  # the distance the temporal code is scaled by

    def for_model(self) -> SelectedMemory:
        """The selection stacked as the model takes it. Slots and distances cross to the device
        without a wait (the per-frame step never makes the host wait for the GPU); the distances
        are scaled here, outside a compiled step, which would otherwise compile anew for each
        sequence length."""
        device = self.pointers[0][0].device
        slots = to_device(torch.tensor([slot for _, slot in self.spatial]), device)
        distances = to_device(torch.tensor([distance for _, distance in self.pointers]), device)
        return SelectedMemory(
            torch.stack([features for features, _ in self.spatial]),
            slots,
            torch.stack([pointer for pointer, _ in self.pointers], dim=1),
            distances / self.max_pointer_distance,
        )


class MemoryBank:
    """Conditioning frames plus a sliding window of recent frames, for a run in one direction."""

    def __init__(
        self,
        conditioning: list[MemoryEntry],
        step: int,
        num_frames: int,
        num_maskmem: int = 7,
        max_obj_ptrs: int = 16,
    ) -> None:
        self.conditioning = sorted(conditioning, key=lambda entry: entry.frame)
        self.step = step
        self.num_frames = num_frames
        self.num_maskmem = num_maskmem
        # SAM 2 scales pointer distances by the longest it could see, which a short sequence caps.
        self.max_pointers = min(num_frames, max_obj_ptrs)
        self.recent: OrderedDict[int, MemoryEntry] = OrderedDict()  # frame -> entry, oldest first

    def add(self, entry: MemoryEntry) -> None:
        """Add the memory of the frame just tracked and forget what no later frame will attend to."""
        self.recent[entry.frame] = entry
        while len(self.recent) > self.max_pointers - 1:
            self.recent.popitem(last=False)
        for position, older in enumerate(reversed(self.recent.values())):
            if position >= self.num_maskmem - 1:
                older.features = None

    def select(self, frame: int) -> MemorySelection:
        """The memories for tracking `frame` (the next frame of the run)."""
        spatial = [(entry.features, 0) for entry in self.conditioning]
        for slot in range(1, self.num_maskmem):
            earlier = self.recent.get(frame - (self.num_maskmem - slot) * self.step)
            if earlier is not None and earlier.features is not None:
                spatial.append((earlier.features, slot))
        # Only conditioning frames already passed contribute pointers (SAM 2 at inference).
        pointers = [
            (entry.pointer, (frame - entry.frame) * self.step)
            for entry in self.conditioning
            if (frame - entry.frame) * self.step >= 0
        ]
        for distance in range(1, self.max_pointers):
            earlier_frame = frame - distance * self.step
            if not 0 <= earlier_frame < self.num_frames:
                break
            earlier = self.recent.get(earlier_frame)
            if earlier is not None:
                pointers.append((earlier.pointer, distance))
        return MemorySelection(spatial, pointers, self.max_pointers - 1)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the bank holds (to check that it stays bounded)."""
        entries = [*self.conditioning, *self.recent.values()]
        return [t for entry in entries for t in (entry.features, entry.pointer) if t is not None]
