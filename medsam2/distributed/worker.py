"""One case from manifest row to mask and scores: the work every batch engine runs in its workers."""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medsam2.allocator import keep_large_allocations
from medsam2.distributed.manifest import AUTO_FORMAT, MANIFEST_PROMPTS, Case, check_format
from medsam2.engine.api import segment_volume
from medsam2.engine.models import DEFAULT_MODEL, load_predictor
from medsam2.engine.predictor import SlicePredictor
from medsam2.engine.prompt_sources import gather_prompts
from medsam2.engine.registry import resolve_model
from medsam2.engine.sam2_predictor import memory_propagation
from medsam2.engine.tracking import MemoryPolicy
from medsam2.errors import InputError, first_line
from medsam2.io import SliceAxis, Volume, check_same_geometry, load_image, save_mask
from medsam2.io.readers import video_not_scan
from medsam2.io.video import is_video
from medsam2.io.atomic import check_output_paths
from medsam2.io.dicom import is_dicom_file
from medsam2.io.masks import load_mask
from medsam2.io.paths import image_suffix
from medsam2.io.readers import PICTURE_SUFFIXES
from medsam2.io.writers import SUPPORTED_MASK_SUFFIXES, check_mask_output
from medsam2.metrics import evaluate

MASKS_FOLDER = "masks"


@dataclass(frozen=True)
class BatchSettings:
    """What applies to every case of a batch (a manifest row may override model and format)."""

    out_dir: Path
    model: str = DEFAULT_MODEL
    output_format: str = AUTO_FORMAT
    device: str = "cpu"
    axis: SliceAxis = "axial"
    window: str | None = None
    keep_largest: bool = False
    fill_holes: bool = False
    nsd_tolerance_mm: float = 2.0
    memory: MemoryPolicy = "recent"  # a memory model's bank, for rows without one

    def __post_init__(self) -> None:
        # Workers may run in other folders (Ray's do): paths must not depend on the driver's.
        object.__setattr__(self, "out_dir", Path(self.out_dir).resolve())
        if Path(self.model).is_file():
            object.__setattr__(self, "model", str(Path(self.model).resolve()))

    def result_defining(self) -> dict:
        """The settings a case's mask and scores depend on (not where it runs or on what device)."""
        return {
            "axis": self.axis,
            "window": self.window,
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
        }


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case: a mask written (status "ok") or the reason it could not be."""

    case_id: str
    status: str  # "ok" or "failed"
    seconds: float  # reading, segmenting, writing and scoring; model loading excluded
    worker: str  # host:pid of the process that ran it
    output: str | None = None  # the mask, relative to the batch's output folder
    dsc: float | None = None  # mean over labels, when the case has ground truth
    nsd: float | None = None
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)  # for errors that are bugs, not bad input


def mask_suffix(output_format: str, image: Path) -> str:
    """The mask file suffix for `image`; "auto" keeps the image's format where masks can be written
    in it (a DICOM folder or file gives a DICOM-SEG, a picture a PNG) and is NIfTI otherwise."""
    if output_format != AUTO_FORMAT:
        return f".{output_format}"
    suffix = image_suffix(image)
    if image.is_dir() or suffix == ".dcm" or (suffix is None and is_dicom_file(image)):
        return ".dcm"
    if suffix in PICTURE_SUFFIXES:
        return ".png"
    return suffix if suffix in SUPPORTED_MASK_SUFFIXES else ".nii.gz"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class CaseRunner:
    """Runs cases in one worker process, loading each model once (on its first case)."""

    def __init__(self, settings: BatchSettings, threads: int | None = None):
        self.settings = settings
        keep_large_allocations()  # a worker process of its own (Ray), or the batch command's
        if threads:
            torch.set_num_threads(threads)
        self._predictors: dict[str, SlicePredictor] = {}

    def predictor(self, model: str) -> SlicePredictor:
        if model not in self._predictors:
            self._predictors[model] = load_predictor(model, self.settings.device)
        return self._predictors[model]

    def run(self, case: Case) -> CaseResult:
        """Segment `case` and write its mask; every error becomes a "failed" result, none is raised."""
        start = time.perf_counter()
        try:
            return self._segment(case, start)
        except InputError as error:
            return self._failed(case, start, first_line(error))
        except Exception as error:  # a bug or a library failure: this case fails, the batch goes on
            return self._failed(case, start, f"internal error: {type(error).__name__}: {error}", traceback.format_exc())

    def _segment(self, case: Case, start: float) -> CaseResult:
        settings = self.settings
        suffix = mask_suffix(check_format(case.output_format or settings.output_format, "format"), case.image)
        if is_video(case.image):  # a cine DICOM reads as a scan too: its frames were propagated as slices
            raise video_not_scan(case.image, "a video")
        volume = load_image(case.image)
        output = Path(MASKS_FOLDER) / f"{case.case_id}{suffix}"
        # A mask that would replace the row's image or ground truth, a folder in its place...
        check_output_paths([case.image, case.gt, case.prompts.mask_prompt], [settings.out_dir / output])
        check_mask_output(settings.out_dir / output, volume)  # ... a DICOM-SEG of a NIfTI, a PNG of a scan
        prompts = gather_prompts(volume, settings.axis, case.prompts, MANIFEST_PROMPTS)
        truth = self._ground_truth(case.gt, volume) if case.gt is not None else None
        if case.model not in (None, DEFAULT_MODEL):  # named as the row gives it (load_predictor says --model)
            resolve_model(case.model, given_as="model column")  # type: ignore[arg-type]
        # Bad input fails above without loading a model; a model's first load is not the case's time.
        loading = time.perf_counter()
        predictor = self.predictor(case.model or settings.model)
        start += time.perf_counter() - loading
        result = segment_volume(
            volume,
            prompts,
            predictor,
            axis=settings.axis,
            window=settings.window,
            config=memory_propagation(case.memory or settings.memory),
            keep_largest=settings.keep_largest,
            fill_holes=settings.fill_holes,
            progress=False,
        )
        save_mask(result.labels.array, like=volume, path=settings.out_dir / output, names=result.names)
        dsc, nsd = self._scores(result.labels.array, truth) if truth is not None else (None, None)
        return CaseResult(case.case_id, "ok", time.perf_counter() - start, worker_name(), str(output), dsc, nsd)

    @staticmethod
    def _ground_truth(path: Path, volume: Volume) -> Volume:
        truth = load_mask(path, like=volume)
        check_same_geometry(truth, volume, what=f"ground truth {path} vs image {volume.source}")
        return truth

    def _scores(self, labels: np.ndarray, truth: Volume) -> tuple[float, float]:
        """Mean DSC and NSD over the labels of the prediction and the ground truth."""
        scores = evaluate(labels, truth.array, spacing=truth.spacing, tolerance_mm=self.settings.nsd_tolerance_mm)
        if not scores:  # both empty: nothing to find and nothing found
            return 1.0, 1.0
        return float(np.mean([s.dice for s in scores])), float(np.mean([s.nsd for s in scores]))

    @staticmethod
    def _failed(case: Case, start: float, error: str, trace: str | None = None) -> CaseResult:
        return CaseResult(case.case_id, "failed", time.perf_counter() - start, worker_name(), error=error, traceback=trace)
