"""SAM 2.1's variants and settings, and recognising a variant from a checkpoint's tensor shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from medsam2.models.sam2.hiera import HieraConfig

# The trunks of Meta's SAM 2.1 configs (sam2.1_hiera_{t,s,b+,l}.yaml); MedSAM2 is the tiny one.
VARIANTS: dict[str, HieraConfig] = {
    "tiny": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), position_embed_size=(7, 7)),
    "small": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), position_embed_size=(7, 7)),
    "base-plus": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20)),
    "large": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8), position_embed_size=(7, 7)),
}


@dataclass(frozen=True)
class SAM2Config:
    """A SAM 2.1 model: its trunk, input size and the inference switches of Meta's video predictor
    (`build_sam2_video_predictor`), which MedSAM2 uses unchanged."""

    variant: str = "tiny"
    image_size: int = 1024  # Meta's checkpoints; MedSAM2 was fine-tuned at 512
    num_maskmem: int = 7  # memory slots: conditioning frames + the 6 most recent frames
    max_obj_ptrs: int = 16  # object pointers attended to (conditioning frames + recent frames)
    # Masks enter the memory encoder as sigmoid(logits) * scale + bias; prompted frames' masks
    # are binarised first, so the memory holds exactly what the user saw.
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    # Three masks (the best by predicted IoU is kept) when a frame has at most one click, and on
    # every tracked frame; otherwise one mask, replaced by the best of the three when unstable.
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    dynamic_multimask_via_stability: bool = True
    trunk: HieraConfig = field(init=False)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown SAM 2.1 variant {self.variant!r} (known: {', '.join(VARIANTS)})")
        if self.image_size % 32:
            raise ValueError(f"image size {self.image_size} is not a multiple of 32")
        object.__setattr__(self, "trunk", VARIANTS[self.variant])

    @property
    def feature_size(self) -> int:
        """Side of the lowest-resolution feature map (stride 16), where memories live."""
        return self.image_size // 16


TRUNK_PREFIX = "image_encoder.trunk."


def detect_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """The SAM 2.1 variant whose trunk has these tensor shapes, or None if none has."""
    patch = state.get(TRUNK_PREFIX + "patch_embed.proj.weight")
    background = state.get(TRUNK_PREFIX + "pos_embed")
    if patch is None or background is None:
        return None
    blocks = {int(m.group(1)) for key in state if (m := re.match(re.escape(TRUNK_PREFIX) + r"blocks\.(\d+)\.", key))}
    for name, trunk in VARIANTS.items():
        if (
            patch.shape[0] == trunk.embed_dim
            and blocks == set(range(sum(trunk.stages)))
            and tuple(background.shape[-2:]) == trunk.position_embed_size
        ):
            return name
    return None


def detect_num_maskmem(state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of memory slots of a checkpoint (the length of its temporal memory encoding)."""
    encoding = state.get("maskmem_tpos_enc")
    return None if encoding is None else int(encoding.shape[0])
