"""SAM 2.1 (Meta) and MedSAM2 (SAM 2.1 hiera-tiny fine-tuned on medical data): our implementation,
loading the official checkpoints unchanged."""

from medsam2.models.sam2.checkpoint import check_sam2_state, is_sam2_state, load_sam2, sam2_from_state
from medsam2.models.sam2.config import VARIANTS, SAM2Config, detect_variant
from medsam2.models.sam2.model import FrameFeatures, FrameOutput, MemoryTokens, SAM2Model, SelectedMemory

__all__ = [
    "VARIANTS",
    "FrameFeatures",
    "FrameOutput",
    "MemoryTokens",
    "SAM2Config",
    "SAM2Model",
    "SelectedMemory",
    "check_sam2_state",
    "detect_variant",
    "is_sam2_state",
    "load_sam2",
    "sam2_from_state",
]
