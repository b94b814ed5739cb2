"""Building SAM 2.1 models from official checkpoints (`{"model": state_dict}`), variant detected."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from medsam2.errors import InputError
from medsam2.models.sam2.config import VARIANTS, SAM2Config, detect_num_maskmem, detect_variant
from medsam2.models.sam2.model import SAM2Model
from medsam2.models.weights import check_state_fits, load_state_strictly, read_state_dict

# What SAM 2.1 added to SAM 2.0's network: the no-object spatial embedding and the projection of
# object pointers' temporal encodings.
SAM2_1_ONLY_KEYS = frozenset({"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"})
KIND = "SAM 2.1 / MedSAM2"


def is_sam2_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has SAM 2's layout (a Hiera trunk), whatever its size."""
    return any(key.startswith("image_encoder.trunk.") for key in state)


def sam2_from_state(
    state: dict[str, torch.Tensor], path: Path, config: SAM2Config | None = None, device: str | torch.device = "cpu"
) -> SAM2Model:
    """A SAM 2.1 model in eval mode holding `state` (read from `path`, named in errors). The
    variant and the number of memory slots come from the tensor shapes; `config` gives the rest
    (image size, inference switches)."""
    model = SAM2Model(sam2_config_of(state, path, config), device)
    load_state_strictly(model, state, path, KIND)
    return model.eval().to(device)


def check_sam2_state(state: dict[str, torch.Tensor], path: Path) -> SAM2Config:
    """The config `sam2_from_state` would build `state` with, once every tensor is checked against
    a network built on the meta device (no memory, no weights): a one-line error for what would
    not load."""
    config = sam2_config_of(state, path)
    with torch.device("meta"):
        check_state_fits(SAM2Model(config, "meta"), state, path, KIND)
    return config


def sam2_config_of(state: dict[str, torch.Tensor], path: Path, config: SAM2Config | None = None) -> SAM2Config:
    """`config` (default: Meta's settings) with the variant and memory slots of `state`'s shapes."""
    variant = detect_variant(state)
    if variant is None:
        known = ", ".join(f"{name} ({trunk.embed_dim} wide, {sum(trunk.stages)} blocks)" for name, trunk in VARIANTS.items())
        raise InputError(f"{path}: not a SAM 2.1 checkpoint (no Hiera trunk of a known size: {known})")
    if SAM2_1_ONLY_KEYS.isdisjoint(state):
        raise InputError(
            f"{path}: a SAM 2.0 checkpoint (without SAM 2.1's {', '.join(sorted(SAM2_1_ONLY_KEYS))}); medsam2 runs SAM 2.1: "
            "use sam2.1_hiera_*.pt (github.com/facebookresearch/sam2) or MedSAM2_latest.pt"
        )
    return replace(config or SAM2Config(), variant=variant, num_maskmem=detect_num_maskmem(state) or 7)


def load_sam2(path: Path | str, config: SAM2Config | None = None, device: str | torch.device = "cpu") -> SAM2Model:
    """`sam2_from_state` of the checkpoint at `path`."""
    path = Path(path)
    return sam2_from_state(read_state_dict(path), path, config, device)
