"""Training data: cases found from the config's sources, checked, split by case and preprocessed
exactly as for inference.

Each case is read with the I/O layer, turned into uint8 slices along the configured axis by the
engine's `prepare_slices` (the same windowing and normalisation `medsam2 segment` applies), and its
label map is checked against the image's geometry. Every non-zero label is an object. All of this
happens before any training, so bad data fails first, with a one-line error.

Training cases keep only the slices around their objects (the samplers never look further); the
validation cases keep every slice, since validation propagates through the whole stack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medsam2.engine.api import prepare_slices
from medsam2.errors import InputError
from medsam2.progress import leave_finished_bar
from medsam2.io import check_same_geometry, load_image, to_slices
from medsam2.io.dicom import is_segmentation
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.paths import image_suffix, list_image_files, mask_file_stem
from medsam2.io.training_set import file_sha256, read_manifest
from medsam2.train.config import DataConfig, DataSource
from medsam2.wording import counted

# nnU-Net names single-channel images CASE_0000.nii.gz beside masks CASE.nii.gz.
CHANNEL_SUFFIX = "_0000"
NPZ_LABEL_KEY = "gts"


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's image and label map are."""

    id: str
    image: Path
    mask: Path  # the image itself for npz files holding both
    npz_key: str | None = None  # read the labels from this array of the image's npz
    modality: str | None = None  # what a training-set manifest says the image is (its file may not)
    window: str | None = None  # the CT window a training-set manifest says the model saw the image through


@dataclass
class CaseData:
    """A case as the samplers and validation see it: uint8 slices along the training axis and the
    label map on the same slices."""

    id: str
    slices: np.ndarray  # (K, H, W) or (K, H, W, 3) uint8
    labels: np.ndarray  # (K, H, W) integer label map
    objects: dict[int, np.ndarray]  # label -> ascending indices into `slices` where it is present

    def largest_slice(self, label: int) -> int:
        """Index of the slice where the object covers the most pixels (the usual key slice)."""
        areas = [(self.labels[index] == label).sum() for index in self.objects[label]]
        return int(self.objects[label][int(np.argmax(areas))])


@dataclass
class TrainingData:
    train: list[CaseData]
    val: list[CaseData]
    manifest: dict  # what was trained on: cases, split, file checksums (written beside the checkpoints)
    sha256: str  # of the manifest's cases: the data's identity, recorded in every checkpoint
    skipped: list[str]  # cases left out (no labelled voxel), one line each


# -- finding cases -------------------------------------------------------------------------------


def discover_cases(sources: tuple[DataSource, ...]) -> list[CaseFiles]:
    """Every case of every source, ids unique; an error for an empty or inconsistent source."""
    if not sources:
        raise InputError("no training data: give data.sources in the config, or --data / --images with --masks")
    cases: dict[str, CaseFiles] = {}
    for source in sources:
        finders: dict[str, Callable[[DataSource], list[CaseFiles]]] = {
            "manifest": _manifest_cases,
            "npz": _npz_cases,
            "images": _folder_cases,
        }
        for case in finders[source.kind()](source):
            if case.id in cases:
                raise InputError(f"case id {case.id!r} comes twice: {cases[case.id].image} and {case.image}")
            cases[case.id] = case
    return list(cases.values())


def _manifest_cases(source: DataSource) -> list[CaseFiles]:
    root, cases = read_manifest(Path(source.manifest))
    return [CaseFiles(case.id, case.image_path(root), case.mask_path(root), modality=case.modality, window=case.window) for case in cases]


def _npz_cases(source: DataSource) -> list[CaseFiles]:
    path = Path(source.npz)
    if not path.exists():
        raise InputError(f"npz source {path}: no such file or folder")
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: no .npz files in this folder")
    return [CaseFiles(mask_file_stem(file), file, file, NPZ_LABEL_KEY) for file in files]


def _folder_cases(source: DataSource) -> list[CaseFiles]:
    """Images (files, or DICOM series folders) paired with the mask file of the same name; an
    image named CASE_0000 also pairs with mask CASE (nnU-Net's layout)."""
    images_dir, masks_dir = Path(source.images), Path(source.masks)
    for kind, folder in (("images", images_dir), ("masks", masks_dir)):
        if not folder.is_dir():
            raise InputError(f"{kind} source {folder}: no such folder")
    images = list_image_files(images_dir) + sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    masks = {mask_file_stem(mask): mask for mask in list_image_files(masks_dir)}
    if not images:
        raise InputError(f"{images_dir}: no image files or DICOM folders in this folder")
    cases, used = [], set()
    for image in images:
        stem = mask_file_stem(image) if image_suffix(image) else image.name
        name = stem if stem in masks else stem.removesuffix(CHANNEL_SUFFIX)
        if name not in masks:
            raise InputError(f"{image}: no mask named {stem}.* in {masks_dir}")
        cases.append(CaseFiles(name, image, masks[name]))
        used.add(name)
    if unmatched := sorted(masks.keys() - used):
        raise InputError(f"{masks[unmatched[0]]}: a mask without an image in {images_dir} ({len(unmatched)} such)")
    return cases


# -- reading and preparing -----------------------------------------------------------------------


def load_case(files: CaseFiles, config: DataConfig, context: int | None) -> CaseData:
    """The case's slices along `config.axis` and labels; with `context`, only the slices from
    `context` before the first labelled slice to `context` after the last (None keeps all)."""
    volume = load_image(files.image, modality=config.modality or files.modality)
    if files.npz_key is not None:
        labels = stored_array(volume, files.npz_key)
        if labels is None:
            raise InputError(f"{files.image}: no '{files.npz_key}' label array in this npz")
        if labels.shape != volume.shape:
            raise InputError(f"{files.image}: '{files.npz_key}' has shape {labels.shape}, the image {volume.shape}")
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise InputError(f"{files.image}: '{files.npz_key}' is not a label map (dtype {labels.dtype})")
    else:
        mask = load_mask(files.mask, like=volume)
        check_same_geometry(mask, volume, f"mask {files.mask} vs image {files.image}")
        labels = mask.array
    slices, axis_index = prepare_slices(volume, config.axis, config.window or files.window)
    labels = to_slices(labels, axis_index)
    present = labels.reshape(labels.shape[0], -1).any(axis=1)
    keep = slice(None)
    if context is not None and present.any():
        labelled = np.flatnonzero(present)
        keep = slice(max(int(labelled[0]) - context, 0), int(labelled[-1]) + context + 1)
    slices, labels = np.ascontiguousarray(slices[keep]), np.ascontiguousarray(labels[keep])
    objects = {
        int(value): np.flatnonzero((labels == value).reshape(labels.shape[0], -1).any(axis=1))
        for value in np.unique(labels)
        if value != 0
    }
    return CaseData(files.id, slices, labels, objects)


def has_labels(files: CaseFiles) -> bool:
    """Whether the case's label map holds a labelled voxel, reading the labels only (an npz's array
    alone); True for a DICOM-SEG, which is read against its image (`load_case` then tells)."""
    if files.npz_key is not None:
        with np.load(files.image) as archive:
            return files.npz_key not in archive.files or bool(np.any(archive[files.npz_key]))  # missing: load_case says so
    if is_segmentation(files.mask):
        return True
    return bool(load_mask(files.mask).array.any())


def split_cases(cases: list[CaseFiles], config: DataConfig, seed: int) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """(train, validation), by case: the explicit `val_cases`, else a seeded random `val_fraction`
    of them (at least one case when the fraction is > 0 and there are two cases or more)."""
    if config.val_cases:
        known = {case.id for case in cases}
        if missing := [name for name in config.val_cases if name not in known]:
            shown = sorted(known)[:8]
            more = f", and {len(known) - len(shown)} more" if len(known) > len(shown) else ""
            raise InputError(f"data.val_cases: no case with id {missing[0]!r} (ids: {', '.join(shown)}{more})")
        val = [case for case in cases if case.id in config.val_cases]
    elif config.val_fraction > 0 and len(cases) >= 2:
        count = min(max(1, round(config.val_fraction * len(cases))), len(cases) - 1)
        order = np.random.default_rng(seed).permutation(len(cases))
        val = [cases[i] for i in sorted(order[:count])]
    else:
        val = []
    train = [case for case in cases if case not in val]
    if not train:
        raise InputError("data.val_cases: every case is held out for validation; none is left to train on")
    return train, val


def prepare_data(config: DataConfig, seed: int, context: int, progress: bool = True) -> TrainingData:
    """Find, split, read and check every case. `context`: slices kept around the objects of
    training cases (the clip samplers need the slices next to an object)."""
    files = discover_cases(config.sources)
    # Cases without a labelled voxel are left out before the split, so that which of them the seed
    # drew did not decide whether a validation (or training) set remains.
    empty = {case.id for case in files if not has_labels(case)}
    if files and len(empty) == len(files):
        raise InputError(f"no training case has a labelled voxel ({counted(len(files), 'case')} read): nothing to learn from")
    if named := sorted(empty & set(config.val_cases)):
        raise InputError(f"data.val_cases: case {named[0]!r} has no labelled voxel to validate on")
    train_files, val_files = split_cases([case for case in files if case.id not in empty], config, seed)
    entries, skipped = [], []
    loaded: dict[str, list[CaseData]] = {"train": [], "val": []}
    # The empty cases are read too, so that one whose mask does not fit its image says so.
    jobs = [("train", case) for case in train_files] + [("val", case) for case in val_files] + [("empty", case) for case in files if case.id in empty]
    for split, case_files in tqdm(jobs, desc="reading cases", unit="case", disable=not progress, leave=leave_finished_bar()):
        case = load_case(case_files, config, context if split == "train" else None)
        if not case.objects:
            skipped.append(f"{case_files.mask}: case {case.id} has no labelled voxel; left out")
            continue
        loaded[split].append(case)
        entries.append(_manifest_entry(case_files, case, split))
    if not loaded["train"]:
        held_out = f", {counted(len(val_files), 'more case')} held out for validation" if val_files else ""
        raise InputError(
            f"no training case has a labelled voxel ({counted(len(train_files), 'training case')} read{held_out}): nothing to learn from"
        )
    # Contents only, not paths: the same data moved to another machine keeps its identity.
    identity = sorted(({k: v for k, v in e.items() if k not in ("image", "mask")} for e in entries), key=lambda e: e["id"])
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    manifest = {"format": "medsam2-training-data", "sha256": digest, "cases": entries, "skipped": skipped}
    return TrainingData(loaded["train"], loaded["val"], manifest, digest, skipped)


def _manifest_entry(files: CaseFiles, case: CaseData, split: str) -> dict:
    image_sha = file_sha256(files.image) if files.image.is_file() else _folder_sha256(files.image)
    return {
        "id": case.id,
        "split": split,
        "image": str(files.image),
        "image_sha256": image_sha,
        "mask": str(files.mask),
        "mask_sha256": image_sha if files.mask == files.image else file_sha256(files.mask),
        "labels": {str(label): len(indices) for label, indices in case.objects.items()},  # label -> slices
    }


def _folder_sha256(folder: Path) -> str:
    """Checksum of a DICOM folder: its files' names and checksums, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
