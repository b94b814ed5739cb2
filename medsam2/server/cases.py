"""The cases a server offers: scans under `--data`, uploads, and the samples installed packages ship.

A case id is ``SOURCE/NAME``: ``data/<path relative to --data>`` (a scan or video file, a DICOM
series folder, or a sub-folder of pictures, which is a video's frames as `medsam2 segment` reads
it), ``upload/<file name>`` or ``sample/<name>``. The samples are files of installed packages and
a synthetic lesion in the MNI152 T1 template, built from them into the cache folder on first use,
listed first (the page opens it on its key slice). Ids come from clients, so a path never leaves its root: ``..``, absolute paths, hidden names and symbolic links that resolve outside the root are
all "no such case". Masks saved next to a case (``<name>_mask.<format>``) are not cases themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from medsam2.engine.prompt_sources import prompts_from_mask
from medsam2.errors import InputError
from medsam2.io import Volume, load_image
from medsam2.io.dicom import is_dicom_file, is_dicomdir
from medsam2.io.paths import VIDEO_SUFFIXES, image_suffix, mask_file_stem, natural_key
from medsam2.io.readers import declared_voxels, file_suffix, is_frame_folder, is_picture_file
from medsam2.io.samples import MNI_FILES, write_synthetic_lesion
from medsam2.io.video import Video, is_video, load_video
from medsam2.models.weights import cache_dir
from medsam2.resources import packaged_file
from medsam2.server.errors import NotFound, PayloadTooLarge, UnsupportedMedia

CaseSource = Literal["data", "upload", "sample"]
SAVED_MASK_MARK = "_mask"
MAX_NAME_BYTES = 255  # a file name's limit on Linux file systems (NAME_MAX)

# Uploads are single files: formats whose header names a second data file (.mhd, .nhdr), DICOM
# series folders and folders of frames cannot come in one request.
UPLOAD_SUFFIXES = (
    ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".npz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp",
    ".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv", ".mpg", ".mpeg", ".wmv", ".gif",
)
SNIFF_BYTES = 4096
# Where each format's signature sits: (offset, bytes); offset None = anywhere in the first SNIFF_BYTES.
SIGNATURES: dict[str, tuple[tuple[int | None, bytes], ...]] = {
    ".nii.gz": ((0, b"\x1f\x8b"),),
    ".nii": ((344, b"n+1\x00"), (4, b"n+2\x00")),
    ".nrrd": ((0, b"NRRD"),),
    ".mha": ((None, b"ElementDataFile"),),
    ".dcm": ((128, b"DICM"), (0, b"\x08\x00")),  # the preamble, or a file written without it (`is_dicom_file`)
    ".npz": ((0, b"PK\x03\x04"),),
    ".png": ((0, b"\x89PNG\r\n\x1a\n"),),
    ".jpg": ((0, b"\xff\xd8\xff"),),
    ".jpeg": ((0, b"\xff\xd8\xff"),),
    ".tif": ((0, b"II*\x00"), (0, b"MM\x00*")),
    ".tiff": ((0, b"II*\x00"), (0, b"MM\x00*")),
    ".bmp": ((0, b"BM"),),
    ".mp4": ((4, b"ftyp"),),
    ".m4v": ((4, b"ftyp"),),
    ".mov": ((4, b"ftyp"), (4, b"moov"), (4, b"wide"), (4, b"mdat")),
    ".avi": ((0, b"RIFF"),),
    ".webm": ((0, b"\x1a\x45\xdf\xa3"),),
    ".mkv": ((0, b"\x1a\x45\xdf\xa3"),),
    ".mpg": ((0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3")),  # a program stream, or an elementary one
    ".mpeg": ((0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3")),
    ".wmv": ((0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),),  # the ASF header object's GUID
    ".gif": ((0, b"GIF8"),),
}


@dataclass(frozen=True)
class Sample:
    distribution: str
    file: str
    title: str
    install_hint: str


LESION_SAMPLE = "synthetic_lesion"
LESION_TITLE = "Synthetic lesion in the MNI152 T1 brain (built sample)"
SAMPLES = {
    "mni152_t1": Sample("nilearn", MNI_FILES["t1"], "MNI152 T1 brain MRI template", "pip install --no-deps nilearn==0.14.1"),
    "ct_small": Sample("pydicom", "pydicom/data/test_files/CT_small.dcm", "CT slice (pydicom test file)", "pip install pydicom"),
}


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    source: CaseSource
    path: Path
    can_save: bool  # whether masks may be written next to it (`saved_mask_path`)
    start_slice: int | None = None  # where the page opens it (the sample lesion's key slice)

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "source": self.source, "can_save": self.can_save, "start_slice": self.start_slice}


def _case_stem(path: Path) -> str:
    """What a case's saved masks are named after: its file name without the suffix, or its folder's name."""
    return path.name if path.is_dir() else mask_file_stem(path)


def saved_mask_path(case_path: Path, suffix: str) -> Path:
    """``scans/a.nii.gz`` -> ``scans/a_mask<suffix>``; a DICOM folder ``ct/`` -> ``ct_mask<suffix>`` beside it."""
    return case_path.parent / f"{_case_stem(case_path)}{SAVED_MASK_MARK}{suffix}"


def mask_name_rival(case_path: Path) -> Path | None:
    """Another case beside `case_path` whose saved masks would have its masks' names (clip.mp4 and
    clip.nii.gz both save clip_mask.*), if any."""
    stem = _case_stem(case_path)
    for other in sorted(case_path.parent.iterdir()):
        if other != case_path and _case_stem(other) == stem and (_is_case_folder(other) if other.is_dir() else _is_case_file(other)):
            return other
    return None


def dicom_series_files(folder: Path, files: list[str]) -> set[str]:
    """The DICOM files of `folder` if they make a series (two or more); a lone one is a file case."""
    dicom_files = {
        name
        for name in files
        if not name.startswith(".")
        and (name.lower().endswith(".dcm") or (image_suffix(Path(name)) is None and is_dicom_file(folder / name)))
    }
    return dicom_files if len(dicom_files) > 1 else set()


def _is_series_folder(folder: Path) -> bool:
    return bool(dicom_series_files(folder, [entry.name for entry in folder.iterdir() if entry.is_file()]))


def _is_case_folder(folder: Path) -> bool:
    """A DICOM series, or a folder of pictures: a video's frames, one case as `medsam2 segment`
    reads it (listed picture by picture, an endoscopy clip's frames were hundreds of cases none of
    which propagates)."""
    return _is_series_folder(folder) or is_frame_folder(folder)


def _is_saved_mask(path: Path) -> bool:
    return mask_file_stem(path).endswith(SAVED_MASK_MARK)


def _is_case_file(path: Path) -> bool:
    """A scan or video file by its suffix (or, for DICOM files of any name, by its preamble)."""
    known = image_suffix(path) is not None or file_suffix(path) in VIDEO_SUFFIXES or (is_dicom_file(path) and not is_dicomdir(path))
    return known and not path.name.startswith(".") and not _is_saved_mask(path)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def resolve_inside(root: Path, relative: str, case_id: str) -> Path:
    """`relative` (a client's POSIX path) under `root`, or `NotFound` if it would leave the root."""
    parts = PurePosixPath(relative).parts if relative else ()
    if (
        "\x00" in relative
        or "\\" in relative
        or relative.startswith("/")
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
        or any(len(part.encode()) > MAX_NAME_BYTES for part in parts)  # the file system would refuse it
    ):
        raise NotFound(f"no case {case_id!r}")
    path = root.joinpath(*parts)
    if not _inside(path, root):
        raise NotFound(f"no case {case_id!r}")
    return path


def check_plain_name(name: str, example: str) -> str:
    """The suffix of an uploaded file's name, or an error for a name that is not a plain file name."""
    if not name or len(name) > 200 or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name) or name.startswith("."):
        raise InputError(f"upload name {name[:200]!r}: give a plain file name such as {example}")
    return file_suffix(Path(name))


def check_upload_name(name: str) -> tuple[str, str]:
    """An upload's file name as it is stored (its suffix in lower case, as the readers know it) and
    that suffix, or an error for names that are not plain scan file names."""
    suffix = check_plain_name(name, "scan.nii.gz")
    if suffix not in UPLOAD_SUFFIXES:
        raise UnsupportedMedia(f"{name}: uploads must be one of {' '.join(UPLOAD_SUFFIXES)} (a DICOM series: one .dcm per upload is not a series; use --data)")
    stored = name[: len(name) - len(suffix)] + suffix
    if _is_saved_mask(Path(stored)):
        raise InputError(f"upload name {name!r}: names ending in {SAVED_MASK_MARK} are the server's saved masks; rename the scan")
    return stored, suffix


def check_signature(name: str, suffix: str, head: bytes) -> None:
    """`UnsupportedMedia` unless the first bytes of an upload carry its format's signature."""
    for offset, signature in SIGNATURES[suffix]:
        found = signature in head if offset is None else head[offset : offset + len(signature)] == signature
        if found:
            return
    raise UnsupportedMedia(f"{name}: the content is not a {suffix} file")


class CaseCatalog:
    """Lists and finds cases, and admits uploads."""

    def __init__(self, data_dir: Path | None, upload_dir: Path | None, offer_samples: bool):
        self.data_dir = data_dir
        self.offer_samples = offer_samples
        self._upload_dir = upload_dir
        self._lesion_sample: Case | None = None
        self._temporary_upload_dir: Path | None = None
        self._admit_lock = threading.Lock()

    # -- listing and lookup ------------------------------------------------------------------------

    def list(self) -> list[Case]:
        data = self._data_cases() if self.data_dir is not None else []
        samples = self._sample_cases() if self.offer_samples else []
        return samples + data + self._upload_cases()

    def get(self, case_id: str) -> Case:
        source, _, rest = case_id.partition("/")
        case = None
        if source == "data" and self.data_dir is not None:
            case = self._data_case(resolve_inside(self.data_dir, rest, case_id))
        elif source == "upload" and "/" not in rest:
            case = self._upload_case(resolve_inside(self.upload_dir, rest, case_id))
        elif source == "sample" and self.offer_samples and (rest in SAMPLES or rest == LESION_SAMPLE):
            case = self._sample_case(rest)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        return case

    def _data_cases(self) -> list[Case]:
        root = self.data_dir
        cases = []
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted((name for name in subfolders if not name.startswith(".")), key=natural_key)
            here = Path(folder)
            in_folder_case = dicom_series_files(here, files)
            if not in_folder_case and here != root and is_frame_folder(here):
                in_folder_case = {name for name in files if is_picture_file(here / name)}
            candidates = ([here] if in_folder_case else []) + [here / name for name in sorted(files, key=natural_key) if name not in in_folder_case]
            cases += [case for path in candidates if (case := self._data_case(path)) is not None]
        return cases

    def _data_case(self, path: Path) -> Case | None:
        root = self.data_dir
        hidden = path.name.startswith(".") and path != root
        if hidden or not path.exists() or not _inside(path, root):
            return None
        if path.is_dir():
            # The data folder's own pictures are cases of their own; it may be one DICOM series.
            if not (_is_series_folder(path) if path == root else _is_case_folder(path)):
                return None
        elif not _is_case_file(path):
            return None
        relative = path.relative_to(root).as_posix() if path != root else ""
        return Case(
            id=f"data/{relative}",
            name=relative or root.name,
            source="data",
            path=path,
            can_save=_inside(saved_mask_path(path, ".nii.gz").parent, root),
        )

    def _upload_cases(self) -> list[Case]:
        folder = self._upload_dir or self._temporary_upload_dir
        if folder is None or not folder.is_dir():
            return []
        return [case for path in sorted(folder.iterdir()) if (case := self._upload_case(path)) is not None]

    def _upload_case(self, path: Path) -> Case | None:
        if not path.is_file() or not _is_case_file(path):
            return None
        # Masks saved in the temporary uploads folder would vanish with it at shutdown: download them.
        return Case(f"upload/{path.name}", path.name, "upload", path, can_save=self._upload_dir is not None)

    def _sample_cases(self) -> list[Case]:
        cases = []
        for name in (LESION_SAMPLE, *SAMPLES):
            try:
                cases.append(self._sample_case(name))
            except InputError:  # the package is not installed: offer the others
                continue
        return cases

    def _sample_case(self, name: str) -> Case:
        if name == LESION_SAMPLE:
            return self._built_lesion_sample()
        sample = SAMPLES[name]
        path = packaged_file(sample.distribution, sample.file, sample.install_hint)
        return Case(f"sample/{name}", sample.title, "sample", path, can_save=False)

    def _built_lesion_sample(self) -> Case:
        """The synthetic lesion (built into the cache folder once per machine), opening on its key slice."""
        if self._lesion_sample is None:
            image, truth = write_synthetic_lesion(cache_dir() / "samples")
            (key_slice_prompt,) = prompts_from_mask(load_image(truth), load_image(image), axis_index=0)
            self._lesion_sample = Case(
                f"sample/{LESION_SAMPLE}", LESION_TITLE, "sample", image, can_save=False, start_slice=key_slice_prompt.slice_index
            )
        return self._lesion_sample

    # -- uploads -----------------------------------------------------------------------------------

    @property
    def upload_dir(self) -> Path:
        """The uploads folder, made on first use (a private temporary one unless --upload-dir was given)."""
        if self._upload_dir is not None:
            self._upload_dir.mkdir(parents=True, exist_ok=True)
            return self._upload_dir
        if self._temporary_upload_dir is None:
            self._temporary_upload_dir = Path(tempfile.mkdtemp(prefix="medsam2-uploads-"))
        return self._temporary_upload_dir

    def staging_file(self, suffix: str) -> Path:
        """A new hidden file in the uploads folder to receive an upload (hidden files are not cases)."""
        handle, name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=self.upload_dir)
        os.close(handle)
        return Path(name)

    def admit(self, staged: Path, name: str) -> Case:
        """Read a staged upload as a scan (or open it as a video); if that works, move it in under
        `name` (made unique) and return its case. The staged file is gone afterwards either way."""
        try:
            video = is_video(staged)  # a header read: once
            declared = None if video else declared_voxels(staged)
            if declared is not None and declared > MAX_UPLOAD_VOXELS:
                raise PayloadTooLarge(
                    f"{name}: its header declares {declared:,} voxels, over the {MAX_UPLOAD_VOXELS:,} an uploaded scan may have"
                )
            try:
                if video:
                    load_frames(staged)  # every frame decodes, as opening the case will need
                else:
                    load_image(staged)
            except InputError as error:
                raise InputError(str(error).replace(str(staged), name)) from None
            with self._admit_lock:
                target = self._unused_name(self.upload_dir / name)
                os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
        return self._upload_case(target)  # type: ignore[return-value]

    @staticmethod
    def _unused_name(path: Path) -> Path:
        suffix = file_suffix(path)
        stem = path.name[: len(path.name) - len(suffix)]
        candidate, number = path, 2
        while candidate.exists():
            candidate = path.with_name(f"{stem}-{number}{suffix}")
            number += 1
        return candidate

    def close(self) -> None:
        if self._temporary_upload_dir is not None:
            shutil.rmtree(self._temporary_upload_dir, ignore_errors=True)
            self._temporary_upload_dir = None


# A session holds its frames in memory; longer clips are for `medsam2 segment`, which streams them.
MAX_VIDEO_FRAMES = 2000
# An uploaded scan is read whole (as float32 and more) before it is checked: a few-MB .nii.gz of
# zeros can declare a billion voxels, and reading it would exhaust the server's memory. A 1 Gvoxel
# cap passes any real scan (a 512 x 512 x 4000 CT is a quarter of it).
MAX_UPLOAD_VOXELS = 1 << 30


def load_frames(path: Path) -> tuple[Volume, Video]:
    """A video's frames as a stack of slices (frame rate and pixel spacing kept), and the video."""
    with load_video(path) as video:
        if video.num_frames > MAX_VIDEO_FRAMES:
            raise InputError(
                f"{path}: {video.num_frames} frames; the web app opens clips of up to {MAX_VIDEO_FRAMES} "
                "(segment longer ones with `medsam2 segment`)"
            )
        frames = video.read()
    spacing = (*(video.pixel_spacing or (1.0, 1.0)), 1.0)
    return Volume(array=frames, spacing=spacing, modality=video.modality, source=path, has_spacing=video.pixel_spacing is not None), video
