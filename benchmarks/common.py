"""Shared by the benchmark scripts: where the shared sample data lives."""

from __future__ import annotations

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
