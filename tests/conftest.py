"""Fixtures shared by the suite: the real sample data, and a writer of DICOM series built from it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medsam2.io import Volume

REPO_ROOT = Path(__file__).resolve().parents[1]


def ctrl_c_as_in_a_terminal() -> None:
    """`subprocess.Popen`'s preexec_fn for a child that a test stops with SIGINT, as Ctrl-C stops a
    command in a terminal: a suite run in the background (nohup, CI) ignores SIGINT, its children
    inherit that, and Python then never raises KeyboardInterrupt in them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for a module's tests: small models on the 2-core machine run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request: pytest.FixtureRequest) -> str:
    """Each device present, for the tests that must hold on every one: the CPU, and CUDA on a GPU."""
    return request.param


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared sample data folder: $MEDSAM2_DATA, else ../shared/data next to the repository."""
    path = Path(os.environ.get("MEDSAM2_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        # A failure, not a skip: CI always has the data, so its absence is a broken set-up.
        pytest.fail(f"sample data folder {path} not found; set MEDSAM2_DATA to the shared data folder", pytrace=False)
    return path


@pytest.fixture(scope="session")
def ct_lesion_cases(shared_data: Path) -> list[Path]:
    """The three DeepLesion CT cases (MedSAM npz), sorted by name."""
    cases = sorted((shared_data / "ct_lesion").glob("CT_Lesion_*.npz"))
    if len(cases) != 3:
        pytest.fail(f"expected 3 CT_Lesion_*.npz in {shared_data / 'ct_lesion'}, found {len(cases)}", pytrace=False)
    return cases


@pytest.fixture
def write_dicom_series() -> Callable[..., list[Path]]:
    """A function writing a grey integer `Volume` as a CT series into a folder; it returns the files in slice order.

    Files are named and instance-numbered in a shuffled order, so only the slice positions give the
    right order. Pixels are stored as uint16 ``value - intercept`` with RescaleIntercept ``intercept``.
    """

    def write(volume: Volume, folder: Path, *, intercept: float = -1024.0, seed: int = 0) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        stored = volume.array.astype(np.int64) - int(intercept)
        assert stored.min() >= 0 and stored.max() < 2**16, "values do not fit uint16 after the intercept"
        direction = volume.direction_matrix
        study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
        order = np.random.default_rng(seed).permutation(volume.shape[0])
        files = []
        for k, pixels in enumerate(stored.astype(np.uint16)):
            position = volume.index_to_world([k, 0, 0])[0]
            dataset = Dataset()
            dataset.file_meta = FileMetaDataset()
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
            dataset.SOPClassUID = CTImageStorage
            dataset.PatientName, dataset.PatientID = "Test^Series", "MEDSAM2-TEST"
            dataset.PatientBirthDate, dataset.PatientSex = "", "O"
            dataset.StudyInstanceUID, dataset.StudyID, dataset.AccessionNumber = study, "1", ""
            dataset.StudyDate, dataset.StudyTime, dataset.ReferringPhysicianName = "20240101", "120000", ""
            dataset.SeriesInstanceUID, dataset.SeriesNumber, dataset.Modality = series, 1, "CT"
            dataset.FrameOfReferenceUID, dataset.PositionReferenceIndicator = frame_of_reference, ""
            dataset.Manufacturer, dataset.ImageType = "medsam2 tests", ["ORIGINAL", "PRIMARY", "AXIAL"]
            dataset.InstanceNumber = int(order[k]) + 1
            dataset.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
            dataset.ImageOrientationPatient = [
                format_number_as_ds(float(v)) for v in (*direction[:, 0], *direction[:, 1])
            ]
            # PixelSpacing is (between rows, between columns) = (sy, sx).
            dataset.PixelSpacing = [format_number_as_ds(volume.spacing[1]), format_number_as_ds(volume.spacing[0])]
            dataset.SliceThickness = format_number_as_ds(volume.spacing[2])
            dataset.Rows, dataset.Columns = pixels.shape
            dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
            dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
            dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = intercept, 1, "HU"
            dataset.PixelData = pixels.tobytes()
            path = folder / f"IM{order[k]:04d}_{series[-6:]}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            files.append(path)
        return files

    return write


@pytest.fixture(scope="session")
def draw_recist() -> Callable[[np.ndarray], np.ndarray]:
    """A function drawing a RECIST marker as MedSAM npz files hold it: the longest diameter of a 2D
    lesion mask, as a one-pixel line; returns the (H, W) uint8 marker."""
    from scipy.spatial.distance import pdist, squareform

    def draw(mask: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(mask)
        xy = np.stack([cols, rows], axis=1)
        first, second = np.unravel_index(np.argmax(squareform(pdist(xy))), (len(xy), len(xy)))
        marker = np.zeros(mask.shape, dtype=np.uint8)
        for t in np.linspace(0.0, 1.0, 4 * mask.shape[0]):
            x, y = np.round(xy[first] + t * (xy[second] - xy[first])).astype(int)
            marker[y, x] = 1
        return marker

    return draw
