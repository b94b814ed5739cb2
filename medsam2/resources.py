"""Files that installed packages ship (model weights, sample scans), found without importing them."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from medsam2.errors import InputError


def packaged_file(distribution: str, file_path: str, install_hint: str) -> Path:
    """Path of `file_path` (a path inside the distribution, or just a file name) in an installed
    distribution, found through its file list, so the distribution's own code, and whatever it
    imports, is never loaded."""
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        raise InputError(f"{distribution} is not installed: {install_hint}") from None
    for entry in files:
        if entry.as_posix() == file_path or ("/" not in file_path and entry.name == file_path):
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise InputError(f"{file_path} is missing from the installed {distribution}: {install_hint}")
