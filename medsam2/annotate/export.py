"""Exporting accepted cases as a training set for fine-tuning (`medsam2.io.training_set`).

Two layouts: ``nifti`` writes ``images/NAME.nii.gz`` (the image's own intensities and geometry) and
``masks/NAME.nii.gz``; ``npz`` writes ``cases/NAME.npz`` in MedSAM's layout (``imgs`` as uint8 after
the project's intensity window, ``gts``, ``spacing``, ``origin``, ``direction``), one file per case.
Either way ``manifest.json`` lists the cases with the mask checksums, the model that pre-segmented
each and its round. The set is built in a hidden folder beside the output and moved into place
when complete, so a reader never sees half an export.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select
from tqdm.auto import tqdm

from medsam2.annotate.images import load_case_image
from medsam2.annotate.project import Project
from medsam2.annotate.schema import CaseRow, CaseState, RoundRow
from medsam2.annotate.store import stored_path
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry
from medsam2.io.atomic import atomic_folder, write_failure
from medsam2.io.readers import library_reason
from medsam2.io.masks import load_mask
from medsam2.io.paths import image_suffix
from medsam2.io.training_set import MANIFEST_NAME, TrainingCase, file_sha256, write_manifest
from medsam2.preprocess import to_uint8

EXPORT_FORMATS = ("nifti", "npz")


def export_training_set(
    project: Project,
    out: Path,
    layout: str = "nifti",
    rounds: list[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[TrainingCase]:
    """Write the accepted cases (of `rounds`, if given) to the folder `out` with a manifest."""
    out = Path(out).resolve()
    if layout not in EXPORT_FORMATS:
        raise InputError(f"--format {layout!r}: choose {' or '.join(EXPORT_FORMATS)}")
    check_export_folder(out, project.folder.resolve(), overwrite)
    with project.transaction() as session:
        query = (
            select(CaseRow, RoundRow.number)
            .join(RoundRow, CaseRow.round_id == RoundRow.id)
            .where(CaseRow.project_id == project.id, CaseRow.state == CaseState.ACCEPTED.value)
        )
        if rounds:
            query = query.where(RoundRow.number.in_(rounds))
        accepted = session.execute(query.order_by(CaseRow.id)).all()
    if not accepted:
        where = f" in round {', '.join(map(str, rounds))}" if rounds else ""
        raise InputError(f"project {project.name}: no accepted cases{where} to export")
    with atomic_folder(out) as staging:
        cases = [
            _export_case(project, case, number, staging, layout)
            for case, number in tqdm(accepted, desc="exporting", unit="case", disable=not progress)
        ]
        write_manifest(staging, cases)
    return cases


def check_export_folder(out: Path, project_folder: Path, overwrite: bool) -> None:
    """A one-line error unless `out` can take the export: new, an empty folder, or with `overwrite`
    an earlier export (a folder holding its manifest), never the project or a folder around or in
    it. `--overwrite` replaces the whole folder: anything else in it would be lost."""
    if out == project_folder or out in project_folder.parents or project_folder in out.parents:
        raise InputError(f"{out}: the project's own folder, or one around or inside it; export to a folder of its own")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{out}: {parent} is a file, not a folder")
            break
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: a file, not a folder")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST_NAME).is_file():
        raise InputError(f"{out}: a folder holding other files (no {MANIFEST_NAME} of an earlier export); choose a new or empty folder")
    if not overwrite:
        raise InputError(f"{out}: holds an earlier export (use --overwrite to replace it)")


def _export_case(project: Project, case: CaseRow, round_number: int, root: Path, layout: str) -> TrainingCase:
    volume = load_case_image(case)
    mask_file = stored_path(project.folder, case.mask, case.mask_sha256)
    mask = load_mask(mask_file)
    # the mask took the image's geometry when accepted: a difference is the image's header changed since
    check_same_geometry(mask, volume, f"case {case.name}: its image's placement changed since the mask was accepted (mask vs {case.image})")
    present = [int(v) for v in np.unique(mask.array) if v]
    labels = {str(v): project.settings.labels.get(str(v), f"object {v}") for v in present}
    if layout == "nifti":
        image, target = f"images/{case.name}.nii.gz", f"masks/{case.name}.nii.gz"
        write_image(volume, root / image)
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask_file, root / target)
        digest = case.mask_sha256
    else:
        image = target = f"cases/{case.name}.npz"
        write_medsam_npz(volume, mask.array, project.settings.window, root / image)
        digest = file_sha256(root / target)
    return TrainingCase(
        id=case.name,
        image=image,
        mask=target,
        labels=labels,
        mask_sha256=digest,
        source=case.image,
        model=case.model_version,
        round=round_number,
        modality=None if volume.modality == "unknown" else volume.modality,
        window=project.settings.window if layout == "nifti" else None,  # an npz's images are windowed already
    )


def write_image(volume: Volume, path: Path) -> None:
    """The image with its intensities and geometry as NIfTI (`path`: .nii.gz). A NIfTI image is its
    file as it is, compressed if it was not: SimpleITK would rewrite the header (one transform for
    both qform and sform, their codes and units changed); anything else goes through SimpleITK
    (colour as a vector image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if "nifti_header" in volume.meta:
        opener = open if image_suffix(Path(volume.source)) == ".nii.gz" else gzip.open
        with open(volume.source, "rb") as source, opener(path, "wb") as target:
            shutil.copyfileobj(source, target)
        return
    image = sitk.GetImageFromArray(volume.array, isVector=volume.is_color)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:  # ITK's failed write (a full disk) as the OSError that says why
        raise write_failure(path, library_reason(error)) from None


def write_medsam_npz(volume: Volume, labels: np.ndarray, window: str | None, path: Path) -> None:
    """MedSAM's npz layout: uint8 ``imgs`` and integer ``gts``, 2D images without the slice axis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = to_uint8(volume, window=window).array
    gts = labels.astype(np.uint8 if labels.max() < 256 else np.uint16)
    if volume.meta.get("is_2d"):
        imgs, gts = imgs[0], gts[0]
    np.savez_compressed(
        path,
        imgs=imgs,
        gts=gts,
        spacing=np.asarray(volume.spacing),
        origin=np.asarray(volume.origin),
        direction=np.asarray(volume.direction),
    )
