"""Fine-tuning settings: dataclasses, read from a YAML file whose keys mirror them.

Every key is checked before anything is loaded or trained: an unknown key, a value of the wrong type
or out of range is a one-line `InputError` naming the file and the dotted key. Paths in the file are
taken relative to the file's folder. ``example_config()`` writes every key with its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medsam2.documents import load_yaml
from medsam2.engine.registry import PRESETS, split_preset
from medsam2.errors import InputError, first_line
from medsam2.io.volume import MODALITY_NAMES
from medsam2.preprocess import parse_window

ModelName = Literal["lite-medsam", "sam2"]
Precision = Literal["auto", "fp32", "bf16"]
SliceAxisName = Literal["axial", "coronal", "sagittal"]


@dataclass(frozen=True)
class DataSource:
    """One place cases come from: a training-set manifest (`annotate export`), a folder or file of
    MedSAM npz (``imgs`` + ``gts``), or a folder of images with a folder of masks of the same names."""

    manifest: str | None = None
    npz: str | None = None
    images: str | None = None
    masks: str | None = None

    def kind(self) -> str:
        """manifest, npz or images; an error for a source that names none or several."""
        given = [name for name in ("manifest", "npz", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InputError(f"data source {self.describe()}: give exactly one of manifest, npz, or images with masks")
        if (given[0] == "images") != (self.masks is not None):
            raise InputError(f"data source {self.describe()}: images and masks go together")
        return given[0]

    def describe(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in dataclasses.asdict(self).items() if v is not None) or "(empty)"


def setting(default: Any, help: str) -> Any:
    """A config field with the one-line help that `example_config` writes beside it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[DataSource, ...] = setting((), "where cases come from (see the examples above)")
    val_fraction: float = setting(0.2, "share of cases held out for validation (at least one case when > 0)")
    val_cases: tuple[str, ...] = setting((), "ids of the validation cases (instead of val_fraction)")
    axis: SliceAxisName = setting("axial", "slicing axis, as segment --axis: axial, coronal or sagittal")
    window: str | None = setting(None, "CT window as segment --window (a preset or W,L); null: by modality")
    modality: str | None = setting(None, "override the files' modality: CT, MR (MRI), PT (PET), US...; null: from the files")
    embedding_cache_slices: int = setting(512, "frozen image encoder: slice embeddings kept in memory (4 MiB each for LiteMedSAM)")


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = setting("lite-medsam", "lite-medsam or sam2 (SAM 2.1 / MedSAM2)")
    checkpoint: str | None = setting(None, "starting weights; null: the embedded LiteMedSAM (sam2 needs one: a file, a preset's name or PRESET=FILE)")
    sam2_preset: str = setting("medsam2", "sam2: the settings the checkpoint was made for (medsam2, sam2.1-tiny, ...)")
    sam2_image_size: int | None = setting(None, "sam2: input size instead of the preset's (512 for medsam2, 1024 for Meta's)")
    freeze_image_encoder: bool = setting(False, "keep the image encoder fixed (faster; its embeddings are computed once)")
    clip_length: int = setting(8, "sam2: consecutive slices per training clip, the first one prompted")


@dataclass(frozen=True)
class PromptConfig:
    box_noise: float = setting(0.1, "box corners move by up to this share of the box's side either way...")
    box_noise_max: float = setting(5.0, "...and at most this many model pixels")
    point_probability: float = setting(0.0, "chance that a sample also gets clicks inside the object")
    num_points: int = setting(1, "clicks per sample that gets clicks")


@dataclass(frozen=True)
class LossConfig:
    dice: float = setting(1.0, "weight of the Dice loss of the mask")
    bce: float = setting(1.0, "weight of the binary cross-entropy of the mask")
    iou: float = setting(1.0, "weight of the IoU head's loss (MSE between predicted and actual IoU)")
    object_score: float = setting(1.0, "sam2: weight of the object-present score's cross-entropy")


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = setting(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas")
    warmup_steps: int = setting(50, "steps of linear warm-up, then a cosine decay")
    min_lr_ratio: float = setting(0.01, "the cosine ends at lr x this")
    clip_grad_norm: float = setting(1.0, "gradient norm clipping; 0 turns it off")


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = setting(1000, "optimizer steps")
    batch_size: int = setting(4, "samples (sam2: clips) per process and micro-batch")
    accumulate: int = setting(1, "micro-batches per optimizer step (gradient accumulation)")
    seed: int = setting(0, "seed of the split, the samples and the prompts")
    device: str = setting("auto", "auto, cpu or cuda (under torchrun: each process's own GPU)")
    precision: Precision = setting("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = setting("runs/finetune", "output folder")
    checkpoint_every: int = setting(100, "steps between full training states (last.pt, for --resume)")
    validate_every: int = setting(100, "steps between validations (also at the start and the end)")
    validate_at_start: bool = setting(True, "score the starting model first, so best.pt never does worse")
    log_every: int = setting(10, "steps between rows of train_log.csv")
    tensorboard: bool = setting(True, "also write TensorBoard events under tensorboard/")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts, numbers and strings (what checkpoints and YAML hold)."""
        return _plain(dataclasses.asdict(self))


# -- reading ------------------------------------------------------------------------------------


def load_config(path: Path | str) -> TrainConfig:
    """The config in a YAML file (missing keys take their defaults); relative paths are resolved
    against the file's folder."""
    path = Path(path)
    try:
        document = load_yaml(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; CONFIG is a YAML file (give data with --data, or --images and --masks)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = first_line(error)
        raise InputError(f"{path}: not valid YAML ({reason})") from None
    config = config_from_dict(document or {}, str(path))
    return resolve_paths(config, path.parent)


def config_from_dict(document: Any, where: str = "config") -> TrainConfig:
    """A checked `TrainConfig` from nested dicts; errors name `where` and the dotted key."""
    config = _build(TrainConfig, document, where, "")
    validate(config, where)
    return config


def resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    """The config with relative data, checkpoint and output paths taken from `base`."""

    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / Path(value).expanduser()).resolve())

    def starting_weights(value: str | None) -> str | None:  # as --model: a preset's name, PRESET=FILE or a file
        if value is None or value in PRESETS:
            return value
        preset, path = split_preset(value)
        return preset + absolute(path)

    sources = tuple(
        DataSource(**{k: absolute(v) for k, v in dataclasses.asdict(source).items()}) for source in config.data.sources
    )
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, sources=sources),
        model=dataclasses.replace(config.model, checkpoint=starting_weights(config.model.checkpoint)),
        output=dataclasses.replace(config.output, dir=absolute(config.output.dir)),
    )


def validate(config: TrainConfig, where: str = "config") -> None:
    """Ranges and combinations that types alone do not catch."""

    def need(condition: bool, key: str, rule: str) -> None:
        if not condition:
            raise InputError(f"{where}: {key} {rule}")

    for source in config.data.sources:
        source.kind()
    # Literal settings: a YAML file's are checked as it is read, options' only here.
    for key, value, hint in (
        ("model.name", config.model.name, ModelName),
        ("training.precision", config.training.precision, Precision),
        ("data.axis", config.data.axis, SliceAxisName),
    ):
        need(value in typing.get_args(hint), key, f"{value!r}: choose one of {', '.join(typing.get_args(hint))}")
    need(0.0 <= config.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    need(config.data.embedding_cache_slices >= 0, "data.embedding_cache_slices", "must be >= 0")
    if config.data.window is not None:
        try:
            parse_window(config.data.window)
        except InputError as error:
            raise InputError(f"{where}: data.{error}") from None
    modality = config.data.modality
    need(modality is None or modality.strip().upper() in MODALITY_NAMES, "data.modality", f"{modality!r}: choose one of {', '.join(MODALITY_NAMES)}")
    need(config.model.clip_length >= 2, "model.clip_length", "must be at least 2 (a prompted slice and one to track)")
    size = config.model.sam2_image_size
    need(size is None or (size > 0 and size % 32 == 0), "model.sam2_image_size", "must be a positive multiple of 32")
    need(config.model.sam2_preset in PRESETS, "model.sam2_preset", f"{config.model.sam2_preset!r}: choose one of {', '.join(PRESETS)}")
    need(config.model.name != "sam2" or config.model.checkpoint is not None, "model.checkpoint", "is required for sam2 (a SAM 2.1 or MedSAM2 checkpoint)")
    need(config.prompts.box_noise >= 0 and config.prompts.box_noise_max >= 0, "prompts.box_noise", "must be >= 0")
    need(0.0 <= config.prompts.point_probability <= 1.0, "prompts.point_probability", "must be in [0, 1]")
    need(config.prompts.num_points >= 1, "prompts.num_points", "must be >= 1")
    for name in ("dice", "bce", "iou", "object_score"):
        need(getattr(config.loss, name) >= 0, f"loss.{name}", "must be >= 0")
    need(config.loss.dice + config.loss.bce > 0, "loss.dice + loss.bce", "must be > 0 (nothing would learn the masks)")
    need(config.optimizer.lr > 0, "optimizer.lr", "must be > 0")
    need(config.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(all(0 <= b < 1 for b in config.optimizer.betas), "optimizer.betas", "must be two numbers in [0, 1)")
    need(config.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    need(0 <= config.optimizer.min_lr_ratio <= 1, "optimizer.min_lr_ratio", "must be in [0, 1]")
    need(config.optimizer.clip_grad_norm >= 0, "optimizer.clip_grad_norm", "must be >= 0")
    need(config.training.seed >= 0, "training.seed", "must be >= 0")
    for name in ("steps", "batch_size", "accumulate"):
        need(getattr(config.training, name) >= 1, f"training.{name}", "must be >= 1")
    need(
        config.training.device in ("auto", "cpu", "cuda") or config.training.device.startswith("cuda:"),
        "training.device",
        f"{config.training.device!r}: choose auto, cpu or cuda",
    )
    for name in ("checkpoint_every", "validate_every", "log_every"):
        need(getattr(config.output, name) >= 1, f"output.{name}", "must be >= 1")


def _build(cls: type, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise InputError(f"{where}: {key or 'the document'} must be a mapping of keys to values, not {_shown(value)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for unknown in value:
        if unknown not in names:
            dotted = f"{key}.{unknown}" if key else str(unknown)
            raise InputError(f"{where}: unknown key '{dotted}' (known here: {', '.join(names)})")
    return cls(**{name: _convert(hints[name], value[name], where, f"{key}.{name}" if key else name) for name in names if name in value})


def _convert(hint: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(inner, value, where, key)
    if origin is Literal:
        if value not in args:
            raise InputError(f"{where}: {key} is {_shown(value)}; choose one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise InputError(f"{where}: {key} must be a list, not {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where, f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise InputError(f"{where}: {key} must be a list of {len(args)} values, not {_shown(value)}")
        return tuple(_convert(arg, item, where, f"{key}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads 5e-5, without a dot, as text
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{where}: {key} must be {_type_name(hint)}, not {_shown(value)}")


def _type_name(hint: Any) -> str:
    return {float: "a number", int: "a whole number", bool: "true or false", str: "text"}.get(hint, str(hint))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def example_config() -> str:
    """A config file with every setting at its default and its help as a comment."""
    lines = [
        "# medsam2 train CONFIG.yaml: every setting at its default. Paths are relative to this file.",
        "# data.sources lists one or more of:",
        "#   - manifest: exported/manifest.json   # a training set written by `medsam2 annotate export`",
        "#   - npz: data/npz/                     # MedSAM npz files (imgs + gts), a folder or one file",
        "#   - images: imagesTr/                  # images of any format medsam2 reads...",
        "#     masks: labelsTr/                   # ...and label maps of the same names",
    ]
    for section in dataclasses.fields(TrainConfig):
        lines.append(f"{section.name}:")
        defaults = getattr(TrainConfig(), section.name)
        for item in dataclasses.fields(defaults):
            value = yaml.safe_dump(_plain(getattr(defaults, item.name)), default_flow_style=True).strip()
            value = value.removesuffix("\n...").strip()
            lines.append(f"  {item.name}: {value}  # {item.metadata['help']}")
    return "\n".join(lines) + "\n"
