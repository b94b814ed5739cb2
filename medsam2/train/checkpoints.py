"""What a training run writes: model checkpoints for `segment --model`, and the full training state
for `--resume`.

A model checkpoint is ``{"model": state_dict, ...}``, the layout every medsam2 model loader reads
(and Meta's SAM 2.1 files use), with the run's record beside the weights: the model family, the
config, the SHA-256 of the data manifest, metrics and the step. The training state (``last.pt``) is
a model checkpoint plus what continuing exactly needs: optimizer and schedule states, each process's
random-number-generator states, the best validation so far and the number of processes. Everything
is plain tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsam2 import __version__
from medsam2.errors import InputError, first_line
from medsam2.io.atomic import atomic_path, write_failure
from medsam2.models.weights import TRAINING_STATE_FORMAT
from medsam2.train.config import TrainConfig

STATE_VERSION = 1
# Settings that may change between an interrupted run and its resumption without changing what it
# computes: where it writes and how often it reports, which device it runs on, where the data lives
# (the data's identity is checked by its checksum instead).
RESUME_FREE_KEYS = ("output", "training.device", "data.sources")


def model_checkpoint(
    network: nn.Module, model_name: str, config: TrainConfig, data_sha256: str, step: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": {key: value.detach().cpu() for key, value in network.state_dict().items()},
        "model_name": model_name,
        "config": config.to_dict(),
        "data_sha256": data_sha256,
        "step": step,
        "metrics": metrics,
        "medsam2_version": __version__,
    }


def save(document: dict[str, Any], path: Path) -> Path:
    """Write a checkpoint atomically: a reader (or a crash) never meets half a file."""
    with atomic_path(path) as temporary:
        try:
            torch.save(document, temporary)
        except RuntimeError as error:  # torch's writer reports a full disk as "unexpected pos 704 vs 598"
            raise write_failure(temporary, first_line(error)) from None
    return path


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_training_state(path: Path, device: torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: no training state to resume from (a run writes it every output.checkpoint_every steps)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        reason = first_line(error)
        raise InputError(f"{path}: not a readable training state ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise InputError(f"{path}: not a medsam2 training state")
    if state.get("version") != STATE_VERSION:
        raise InputError(f"{path}: training state version {state.get('version')!r} is not supported")
    return state


def check_resumable(state: dict[str, Any], path: Path, config: TrainConfig, data_sha256: str, world_size: int) -> None:
    """An error unless continuing `state` with this config, data and number of processes gives
    exactly the run it came from."""
    if state["data_sha256"] != data_sha256:
        raise InputError(f"{path}: the training data changed since this run started (data manifest checksum differs)")
    if state["world_size"] != world_size:
        raise InputError(f"{path}: the run used {state['world_size']} process(es), this one {world_size}; resume with the same number")
    before, now = _flatten(state["config"]), _flatten(config.to_dict())
    changed = sorted(
        key for key in before.keys() | now.keys()
        if before.get(key) != now.get(key) and not any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)
    )
    if changed:
        key = changed[0]
        raise InputError(
            f"{path}: {key} was {before.get(key)!r}, now {now.get(key)!r}; resuming needs the same settings "
            "(to train further from these weights, start a new run with model.checkpoint pointing at this file)"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
