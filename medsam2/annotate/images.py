"""Cases' images and rounds' checkpoints where the record finds them: by absolute path, each
recognised by its content (a case's voxels, a checkpoint's SHA-256), so a project whose files moved
(another machine, another mount point) is pointed at their new place with `relocate`, and a file
that changed is refused rather than annotated as if it were the one imported."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import select
from tqdm.auto import tqdm

from medsam2.annotate.project import Project
from medsam2.annotate.schema import CaseRow, RoundRow
from medsam2.engine.registry import split_preset
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry, load_image
from medsam2.io.training_set import file_sha256
from medsam2.progress import leave_finished_bar


def voxels_sha256(volume: Volume) -> str:
    """SHA-256 of an image's voxel values with their type and (Z, Y, X) shape: the same for the same
    image wherever its file lies and however it is compressed."""
    array = np.ascontiguousarray(volume.array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def placement_of(volume: Volume) -> dict:
    """Where an image lies in the patient, as the annotation database records it (JSON): a header
    rewritten with the voxels untouched changes it, and every mask drawn on the image with it."""
    return {"spacing": list(volume.spacing), "origin": list(volume.origin), "direction": list(volume.direction), "has_spacing": volume.has_spacing}


def check_same_image(case: CaseRow, volume: Volume, where: str | None = None) -> str:
    """`volume`'s `voxels_sha256`, or a one-line error unless it is the image `case` was imported
    from: by its voxels and placement (by its shape alone for a case imported before either was
    recorded)."""
    shown = where or case.image
    if list(volume.shape) != list(case.shape):
        raise InputError(f"{shown}: not the image case {case.name} was imported from (shape {volume.shape}, was {tuple(case.shape)})")
    digest = voxels_sha256(volume)
    if case.voxels_sha256 is not None and digest != case.voxels_sha256:
        raise InputError(f"{shown}: not the image case {case.name} was imported from (its voxels differ)")
    if case.placement is not None:
        check_same_geometry(
            replace(volume, **case.placement), volume,
            f"{shown}: the image of case {case.name} was placed otherwise when it was imported (then vs now)",
        )
    return digest


def load_case_image(case: CaseRow) -> Volume:
    """The image of `case` from where the record says it is, checked to be the one imported."""
    if not os.path.exists(case.image):
        raise InputError(
            f"{case.image}: the image of case {case.name} is not there (if the data moved, point the project at "
            "its new place: medsam2 annotate relocate PROJECT OLD_FOLDER NEW_FOLDER)"
        )
    try:
        volume = load_image(case.image)
    except InputError as error:  # the reader's line names the file only
        raise InputError(f"case {case.name}: {error}") from None
    check_same_image(case, volume)
    return volume


@dataclass(frozen=True)
class Relocation:
    """One path of the record pointed elsewhere."""

    kind: Literal["case", "round"]
    name: str  # the case's name, or "round N"
    old: str
    new: str


def moved(path: str, old: str, new: str) -> str | None:
    """`path` under `new` as it is under `old`, or None if it is not under `old`."""
    if path == old:
        return new
    if path.startswith(old.rstrip(os.sep) + os.sep):
        return os.path.join(new, os.path.relpath(path, old))
    return None


def relocate(project: Project, old: Path, new: Path, dry_run: bool = False, progress: bool = True) -> list[Relocation]:
    """Point every case image and round checkpoint the record keeps under folder `old` (or at file
    `old`) at the same place under `new`, after checking each is there and the same (a case's voxels and
    placement, or its shape for a case imported before they were recorded, whose voxels and placement
    are recorded now; a checkpoint's SHA-256). All or nothing: the first file missing or different is a one-line error and the record
    is left as it was. Nothing is written with `dry_run`."""
    # Symbolic links resolved, as imports record paths.
    old_folder, new_folder = os.path.realpath(old), os.path.realpath(new)
    if not os.path.exists(new_folder):
        raise InputError(f"{new}: no such folder (or file)")
    with project.transaction() as session:
        cases = session.scalars(select(CaseRow).where(CaseRow.project_id == project.id).order_by(CaseRow.name)).all()
        rounds = session.scalars(select(RoundRow).where(RoundRow.project_id == project.id).order_by(RoundRow.number)).all()
    moves: list[Relocation] = []
    case_updates: dict[int, tuple[str, str, dict]] = {}  # case id -> (new image path, voxels SHA-256, placement)
    round_updates: dict[int, str] = {}  # round id -> its model with the new checkpoint path
    for case in tqdm(cases, desc="checking images", unit="case", disable=not progress, leave=leave_finished_bar()):
        target = moved(case.image, old_folder, new_folder)
        if target is None:
            continue
        if not os.path.exists(target):
            raise InputError(f"{target}: no such file or folder (the image of case {case.name}, recorded at {case.image})")
        try:
            volume = load_image(target)
        except InputError as error:
            raise InputError(f"{error} (read as the image of case {case.name}, recorded at {case.image})") from None
        case_updates[case.id] = target, check_same_image(case, volume, target), placement_of(volume)
        moves.append(Relocation("case", case.name, case.image, target))
    for round_row in rounds:
        preset, checkpoint = split_preset(round_row.model)  # kept: the settings the round runs its file with
        target = moved(checkpoint, old_folder, new_folder) if os.path.isabs(checkpoint) else None
        if target is None:
            continue
        if not os.path.isfile(target):
            raise InputError(f"{target}: no such file (the checkpoint of round {round_row.number}, recorded at {checkpoint})")
        if file_sha256(Path(target)) != round_row.model_sha256:
            raise InputError(f"{target}: not the checkpoint round {round_row.number} began with (its SHA-256 differs)")
        round_updates[round_row.id] = preset + target
        moves.append(Relocation("round", f"round {round_row.number}", checkpoint, target))
    if not moves:
        raise InputError(f"{old}: no case image or round checkpoint of the project is recorded under this folder")
    if not dry_run:
        with project.transaction() as session:
            for case_id, (image, digest, placement) in case_updates.items():
                row = session.get(CaseRow, case_id)
                row.image, row.voxels_sha256, row.placement = image, digest, placement
            for round_id, model in round_updates.items():
                session.get(RoundRow, round_id).model = model
    return moves
