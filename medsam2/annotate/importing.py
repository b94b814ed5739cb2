"""Importing cases: image files, DICOM series folders or folders of either, with optional masks to
review and prompt hints to pre-segment from.

Every case is committed in its own transaction after its image has been read and its mask stored,
so an import killed half-way leaves the cases it committed, complete, and nothing of the one it was
on; running the same import again adds the rest (cases already imported from the same image are
skipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from medsam2.annotate.project import Project
from medsam2.annotate.prompts import prompt_to_json
from medsam2.annotate.schema import CaseRow, CaseState, PresegSource
from medsam2.annotate.images import placement_of, voxels_sha256
from medsam2.annotate.store import store_mask
from medsam2.engine.prompt_sources import PromptSources, gather_prompts
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry, load_image
from medsam2.io.dicom import dicom_subfolder, is_dicom_file, is_dicomdir
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.paths import image_suffix, list_image_files, mask_file_stem

IMPORTED_MASK_MODEL = "imported"


@dataclass
class ImportSummary:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the project from the same image
    without_mask: list[str] = field(default_factory=list)  # imported with no mask although masks were given
    # Already in the project, given a mask or prompt hints again: a case keeps what it was imported with.
    hints_not_used: list[str] = field(default_factory=list)
    # Not imported: the same voxels as a case already in the project (another copy or path of its
    # image), file -> that case; a second case would be annotated, and exported, twice.
    duplicates: dict[str, str] = field(default_factory=dict)


def source_stem(path: Path) -> str:
    """The file name without its image suffix, or the DICOM folder's name."""
    return path.name if path.is_dir() else mask_file_stem(path)


@dataclass(frozen=True)
class FoundImage:
    """An image to import and the stem its case and its mask are named after."""

    path: Path  # absolute, links resolved: the path the case records
    stem: str  # its `source_stem`; with --recursive, its path below the folder given, joined by "_"


def case_name(stem: str) -> str:
    """A case's name: `stem` with characters other than letters, digits and ``. _ - +`` replaced by
    ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip(".-_+") or "case"


def is_dicom_series(folder: Path) -> bool:
    # A DICOMDIR indexes a PACS export's folders; it is no image of the folder it lies in.
    return folder.is_dir() and any(is_dicom_file(entry) and not is_dicomdir(entry) for entry in folder.iterdir())


def find_images(path: Path, recursive: bool = False) -> list[FoundImage]:
    """The images `path` names: itself (a file or a DICOM series folder), or the image files and
    DICOM series folders directly inside it, or with `recursive` at any depth below it (each named
    after its path below `path`: a PACS export's PATIENT/STUDY/SERIES folders give PATIENT_STUDY_SERIES)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() or is_dicom_series(path):
        return [FoundImage(path.resolve(), source_stem(path))]
    found = []
    for folder in _folders_below(path) if recursive else [path]:
        inside = [p for p in list_image_files(folder) if image_suffix(p) != ".dcm"]
        inside += [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and is_dicom_series(p)]
        for image in inside:
            below = image.relative_to(path).parts[:-1] if recursive else ()
            found.append(FoundImage(image.resolve(), "_".join([*below, source_stem(image)])))
    if not found:
        below = None if recursive else dicom_subfolder(path)  # a PACS export: patient/study/series folders
        hint = f"; DICOM series lie deeper, e.g. {below}: import the folder with --recursive, or give series folders" if below else ""
        raise InputError(f"{path}: no images in this folder{' or below it' if recursive else ''}{hint}")
    return found


def _folders_below(path: Path) -> list[Path]:
    """`path` and every folder below it but those of DICOM series (their images) and hidden ones,
    depth first by name."""
    folders = [path]
    for entry in sorted(path.iterdir()):
        if entry.is_dir() and not entry.name.startswith(".") and not is_dicom_series(entry):
            folders += _folders_below(entry)
    return folders


def match_masks(images: list[FoundImage], masks: Path | None) -> dict[Path, Path]:
    """Image -> its mask: `masks` itself for one image, else the file named after the image's stem
    in the folder `masks` (images without one are imported without a mask)."""
    if masks is None:
        return {}
    if not masks.exists():
        raise InputError(f"--masks {masks}: no such file or folder")
    if masks.is_file():
        if len(images) != 1:
            raise InputError(f"--masks {masks}: a single mask file goes with a single image; give a folder of masks")
        return {images[0].path: masks}
    by_stem = {mask_file_stem(p): p for p in list_image_files(masks)}
    matched = {image.path: by_stem[image.stem] for image in images if image.stem in by_stem}
    if images and not matched:
        raise InputError(
            f"--masks {masks}: no mask there is named like an image (the mask of {images[0].path.name} would be "
            f"{images[0].stem} with an image suffix, e.g. {images[0].stem}.nii.gz)"
        )
    return matched


def import_cases(
    project: Project,
    paths: list[Path],
    masks: Path | None = None,
    prompts: PromptSources | None = None,
    progress: bool = True,
    recursive: bool = False,
) -> ImportSummary:
    """Add the images of `paths` to the project as cases.

    A case with a mask starts pre-segmented (the mask is what the annotator reviews); a case with
    prompt hints (`prompts`, for a single image, or the RECIST marker of a MedSAM npz) can be
    pre-segmented by the model; any other starts from the annotator's first prompt."""
    images = [image for path in paths for image in find_images(Path(path), recursive)]
    if prompts is not None and prompts != PromptSources() and len(images) != 1:
        raise InputError("prompt hints (--box, --point, --recist, --prompts) go with a single image")
    # Series folders of a PACS export are often all called CT or SE0001.
    way_out = "" if recursive else ", or import a folder holding both with --recursive (cases named after their path below it)"
    names: dict[str, Path] = {}
    for image in images:
        name = case_name(image.stem)
        other = names.setdefault(name, image.path)
        if other != image.path:
            raise InputError(f"{image.path}: case name {name!r} is also that of {other}; rename one of them{way_out}")
    mask_of = match_masks(images, masks)
    summary = ImportSummary()
    with project.transaction() as session:
        rows = session.execute(
            select(CaseRow.name, CaseRow.image, CaseRow.voxels_sha256).where(CaseRow.project_id == project.id)
        ).all()
    known = {name: image for name, image, _ in rows}
    case_of_voxels = {digest: name for name, _, digest in rows if digest is not None}
    # The same name from another file: the same image elsewhere (not imported again), or a clash.
    moved = {name: voxels_sha256(load_image(image)) for name, image in names.items() if name in known and known[name] != str(image)}
    for name, digest in moved.items():
        if digest not in case_of_voxels:
            raise InputError(f"{names[name]}: the project already has a case {name!r}, from {known[name]} (other voxels); rename one of them{way_out}")
    given_hints = prompts is not None and prompts != PromptSources()
    for name, image in tqdm(names.items(), desc="importing", unit="case", disable=not progress):
        if name in known:
            if name in moved:
                summary.duplicates[str(image)] = case_of_voxels[moved[name]]
            else:
                summary.skipped.append(name)
            if given_hints or image in mask_of:
                summary.hints_not_used.append(name)
            continue
        row, preseg = _read_case(project, name, image, mask_of.get(image), prompts)
        if row.voxels_sha256 in case_of_voxels:
            summary.duplicates[str(image)] = case_of_voxels[row.voxels_sha256]
            continue
        if preseg is not None:  # stored only now: a duplicate's mask would be a file nothing names
            row.preseg_mask, row.preseg_sha256 = store_mask(project.folder, *preseg)
        try:
            with project.transaction() as session:
                row.round_id = project.current_round(session).id if row.preseg_mask else None
                session.add(row)
        except IntegrityError:  # another process imported it meanwhile
            summary.skipped.append(name)
            continue
        summary.imported.append(name)
        case_of_voxels[row.voxels_sha256] = name
        if masks is not None and image not in mask_of:
            summary.without_mask.append(name)
    return summary


def _read_case(project: Project, name: str, image: Path, mask: Path | None, prompts: PromptSources | None) -> tuple[CaseRow, tuple[np.ndarray, Volume] | None]:
    """The case's row, and its mask (checked) with the image, for the caller to store."""
    volume = load_image(image)
    sources = prompts or PromptSources()
    has_hints = sources != PromptSources() or stored_array(volume, "recist") is not None
    try:
        hints = [prompt_to_json(p) for p in gather_prompts(volume, project.settings.axis, sources)] if has_hints else None
    except InputError as error:
        raise InputError(f"{image}: {error}") from None
    if hints is not None and any("box" not in h and "points" not in h for h in hints):
        raise InputError(f"{image}: only box, click and RECIST hints can be imported (mask prompts: use --masks)")
    for hint in hints or []:
        project.settings.check_label(hint["obj_id"], f"{image}: the hint on slice {hint['slice']}")
    now = project.clock()
    row = CaseRow(
        project_id=project.id,
        name=name,
        image=str(image),
        shape=list(volume.shape),
        voxels_sha256=voxels_sha256(volume),
        placement=placement_of(volume),
        hints=hints,
        state=CaseState.NEW.value,
        imported_at=now,
    )
    if mask is not None:
        labels = load_mask(mask, like=volume)
        check_same_geometry(labels, volume, f"{mask} vs {image}")
        if not labels.array.any():
            raise InputError(f"{mask}: the mask is empty")
        for value in np.unique(labels.array):
            if value:
                project.settings.check_label(int(value), str(mask))
        row.preseg_source = PresegSource.MASK.value
        row.model_version = IMPORTED_MASK_MODEL
        row.state = CaseState.PRESEGMENTED.value
        return row, (labels.array, volume)
    return row, None
