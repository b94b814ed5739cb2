"""Network modules and checkpoint loading."""

from medsam2.models.lite_medsam import LiteMedSAM, load_lite_medsam
from medsam2.models.weights import bundled_lite_medsam_checkpoint, load_state_strictly, read_state_dict, verify_file

__all__ = [
    "LiteMedSAM",
    "bundled_lite_medsam_checkpoint",
    "load_lite_medsam",
    "load_state_strictly",
    "read_state_dict",
    "verify_file",
]
