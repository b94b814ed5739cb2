"""Training-set manifests: the hand-over between the annotation pipeline (`annotate export`) and
fine-tuning (`medsam2 train`).

A training set is a folder holding images, their label maps and ``manifest.json``::

    {"format": "medsam2-training-set", "version": 1,
     "cases": [{"id": "case_001", "image": "images/case_001.nii.gz", "mask": "masks/case_001.nii.gz",
                "labels": {"1": "lesion"}, "mask_sha256": "...", "source": "/data/ct/case_001.nii.gz",
                "model": "lite-medsam", "round": 2}]}

Paths are relative to the manifest's folder (POSIX separators), so the folder can be moved or copied
to a training machine as a whole. An npz case may name the same file as image and mask (its ``imgs``
and ``gts``/``segs`` arrays). ``labels`` maps label values to names; ``source``, ``model`` and
``round`` record where the mask came from and are optional; so are ``modality``, the image's own
(a DICOM's tag, which a NIfTI copy of it cannot hold), which training reads the image as, and
``window``, the CT window the model saw the image through (a preset or "W,L"), which training
applies unless its config gives one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from medsam2.errors import InputError
from medsam2.io.atomic import atomic_write_text

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "medsam2-training-set"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TrainingCase:
    """One image and its label map, paths relative to the manifest's folder."""

    id: str
    image: str
    mask: str
    labels: dict[str, str] = field(default_factory=dict)  # label value (as text) -> name
    mask_sha256: str | None = None
    source: str | None = None
    model: str | None = None
    round: int | None = None
    modality: str | None = None
    window: str | None = None

    def image_path(self, root: Path) -> Path:
        return root / PurePosixPath(self.image)

    def mask_path(self, root: Path) -> Path:
        return root / PurePosixPath(self.mask)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, cases: list[TrainingCase]) -> Path:
    """Write ``root/manifest.json`` (atomically) for `cases`, whose files must already be in `root`."""
    root = Path(root)
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"{root / MANIFEST_NAME}: case ids must be unique")
    for case in cases:
        for relative in (case.image, case.mask):
            if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
                raise InputError(f"{root / MANIFEST_NAME}: case {case.id}: path {relative!r} must be relative, inside the folder")
    document = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "cases": [asdict(case) for case in cases]}
    return atomic_write_text(root / MANIFEST_NAME, json.dumps(document, indent=1) + "\n")


def read_manifest(path: Path) -> tuple[Path, list[TrainingCase]]:
    """(root folder, cases) of a manifest file, or of the manifest inside a folder. Checks that every
    file exists and that recorded mask checksums still hold."""
    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    try:
        document = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise InputError(f"{manifest}: no such training-set manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{manifest}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{manifest}: not a medsam2 training-set manifest (format {MANIFEST_FORMAT!r} expected)")
    if document.get("version") != MANIFEST_VERSION:
        raise InputError(f"{manifest}: manifest version {document.get('version')!r} is not supported (expected {MANIFEST_VERSION})")
    root = manifest.parent
    cases = []
    for number, entry in enumerate(document.get("cases") or [], start=1):
        try:
            case = TrainingCase(**entry)
        except TypeError as error:
            raise InputError(f"{manifest}: case {number}: {error}") from None
        for kind, file in (("image", case.image_path(root)), ("mask", case.mask_path(root))):
            if not file.is_file():
                raise InputError(f"{manifest}: case {case.id}: {kind} file {file} is missing")
        if case.mask_sha256 is not None and file_sha256(case.mask_path(root)) != case.mask_sha256:
            raise InputError(f"{manifest}: case {case.id}: mask {case.mask} does not match its recorded checksum")
        cases.append(case)
    if not cases:
        raise InputError(f"{manifest}: the manifest lists no cases")
    return root, cases
