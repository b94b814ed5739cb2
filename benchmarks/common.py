"""Shared by the benchmark scripts: where the shared sample data lives, and their common options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """$MEDSAM2_DATA, else ../shared/data beside the repository; exits with a message if absent."""
    path = Path(os.environ.get("MEDSAM2_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        sys.exit(f"sample data folder {path} not found; set MEDSAM2_DATA")
    return path


def ct_lesion_cases() -> list[Path]:
    return sorted((shared_data() / "ct_lesion").glob("CT_Lesion_*.npz"))


def checked_device(device: str) -> str:
    """`device` ("cpu", "cuda", "cuda:N") if this machine has it; else exits with a one-line message
    (e.g. cuda asked for on a machine without a GPU) instead of torch's traceback."""
    from medsam2.engine.models import resolve_device
    from medsam2.errors import InputError

    try:
        resolve_device(device)
    except InputError as error:
        sys.exit(f"{Path(sys.argv[0]).name}: {error}")
    return device


def image_size(text: str) -> int:
    """An argparse `type` for a SAM 2.1 input size: a positive multiple of 32."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive multiple of 32 (512 for MedSAM2, 1024 for Meta's)")
    return value
