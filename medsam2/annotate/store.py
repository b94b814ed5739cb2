"""The project's files: masks stored by content, named by their SHA-256.

A mask is written (atomically) under its digest before the database row that names it is
committed, so a process killed in between leaves at most an unreferenced file, never a row naming a
missing or half-written one; storing the same mask twice is harmless.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path, PurePosixPath

import numpy as np

from medsam2.errors import InputError
from medsam2.io import Volume, save_mask
from medsam2.io.masks import load_mask
from medsam2.io.training_set import file_sha256

FILES_FOLDER = "files"
MASK_SUFFIX = ".nii.gz"


def store_mask(project_folder: Path, labels: np.ndarray, like: Volume) -> tuple[str, str]:
    """Write a label map in `like`'s geometry; return (path relative to the project folder, SHA-256)."""
    incoming = project_folder / FILES_FOLDER / ".incoming" / f"{uuid.uuid4().hex}{MASK_SUFFIX}"
    try:
        save_mask(labels, like=like, path=incoming)
        digest = file_sha256(incoming)
        relative = PurePosixPath(FILES_FOLDER, digest[:2], digest + MASK_SUFFIX)
        final = project_folder / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming, final)
    finally:
        incoming.unlink(missing_ok=True)
    return relative.as_posix(), digest


def stored_path(project_folder: Path, relative: str, sha256: str) -> Path:
    """The file of a stored mask, checked against its recorded SHA-256."""
    path = project_folder / PurePosixPath(relative)
    if not path.is_file():
        raise InputError(f"{path}: a stored mask is missing from the project folder")
    if file_sha256(path) != sha256:
        raise InputError(f"{path}: a stored mask no longer matches its recorded SHA-256")
    return path


def load_stored_mask(project_folder: Path, relative: str, sha256: str) -> np.ndarray:
    """The (Z, Y, X) label map of a stored mask."""
    return load_mask(stored_path(project_folder, relative, sha256)).array


# The model's label map of a case as of one state of its record, kept by the command that computed
# it: one file per case, replaced by the next.
RESULTS_FOLDER = "results"


def _result_file(project_folder: Path, case_id: int) -> Path:
    return project_folder / RESULTS_FOLDER / f"case-{case_id}.npz"


def remember_result(project_folder: Path, case_id: int, stamp: str, labels: np.ndarray) -> None:
    """Keep `labels` as the model's label map of case `case_id` in the state of its record that
    `stamp` names; silently nothing where the folder cannot take it (read-only, a file in its place)."""
    path = _result_file(project_folder, case_id)
    incoming = path.with_name(f".{uuid.uuid4().hex}.npz")
    try:
        path.parent.mkdir(exist_ok=True)
        np.savez_compressed(incoming, labels=labels, stamp=np.array(stamp))
        os.replace(incoming, path)
    except OSError:
        with contextlib.suppress(OSError):
            incoming.unlink(missing_ok=True)


def recall_result(project_folder: Path, case_id: int, stamp: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The label map `remember_result` kept for exactly the state `stamp` names, of `shape`; else None."""
    try:
        with np.load(_result_file(project_folder, case_id), allow_pickle=False) as kept:
            if str(kept["stamp"]) != stamp:
                return None
            labels = kept["labels"]
    except Exception:  # noqa: BLE001 - none kept, or damaged in any way (empty, cut short, not an npz): replay
        return None
    return labels if labels.shape == shape else None
