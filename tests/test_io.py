"""medsam2.io on real data: every format round-trips image geometry and mask labels; bad input fails cleanly."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from scipy import ndimage
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.errors import InputError
from medsam2.resources import packaged_file
from medsam2.io import Volume, check_same_geometry, load_image, save_mask
from medsam2.io.dicom import build_segmentation
from medsam2.io.atomic import atomic_folder, atomic_new_path, atomic_path, atomic_write_text, check_output_paths, outputs_together
from medsam2.io.masks import label_names, load_mask
from medsam2.io.volume import in_storage_order_of
from medsam2.io.native_stderr import METAIO_COMPLAINTS, native_lines_dropped

IN_PLANE_SPACING = {"000001": 0.314, "000002": 0.977, "000015": 0.938}
ITK_SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


@pytest.fixture(scope="module")
def ct_case(ct_lesion_cases: list[Path]) -> Volume:
    """CT_Lesion_000002: 13 slices of 512x512, 0.977 x 0.977 x 5 mm."""
    return load_image(ct_lesion_cases[1])


def to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array if array is None else array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def assert_same_volume(actual: Volume, expected: Volume, atol: float = 1e-6) -> None:
    np.testing.assert_array_equal(actual.array, expected.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=0, atol=atol, err_msg=name)


def visible_files(folder: Path) -> list[str]:
    """Everything in `folder`, hidden staging folders included, as sorted names."""
    return sorted(entry.name for entry in folder.iterdir())


# --- MedSAM npz -----------------------------------------------------------------------------------


def test_ct_lesion_npz_load_with_the_files_geometry(ct_lesion_cases: list[Path]) -> None:
    for case in ct_lesion_cases:
        raw = np.load(case)
        volume = load_image(case)
        np.testing.assert_array_equal(volume.array, raw["imgs"])
        assert volume.spacing == tuple(raw["spacing"])
        assert volume.spacing[0] == volume.spacing[1] == pytest.approx(IN_PLANE_SPACING[case.name[10:16]], abs=5e-4)
        assert volume.spacing[2] == 5.0
        assert volume.origin == tuple(raw["origin"])
        assert volume.direction == tuple(raw["direction"])
        np.testing.assert_array_equal(volume.meta["npz"]["gts"], raw["gts"])
        assert volume.modality == "unknown"
        assert load_image(case, modality="ct").modality == "CT"


def test_npz_mask_keeps_the_npz_layout(tmp_path: Path, ct_case: Volume) -> None:
    gts = ct_case.meta["npz"]["gts"]
    written = np.load(save_mask(gts, ct_case, tmp_path / "segs.npz"))
    raw = np.load(ct_case.source)
    assert written["segs"].dtype == np.uint8
    np.testing.assert_array_equal(written["segs"], gts)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_array_equal(written[key], raw[key])
    # An npz without geometry gets a mask without any: no 1 mm spacing or placement made up.
    np.savez(tmp_path / "bare.npz", imgs=raw["imgs"])
    bare = load_image(tmp_path / "bare.npz")
    assert set(np.load(save_mask(gts, bare, tmp_path / "bare_segs.npz")).files) == {"segs"}
    assert not load_mask(tmp_path / "bare_segs.npz").has_spacing
    # Likewise a Volume made in Python without spacing: its 1 mm is a pixel, not a measurement.
    in_memory = Volume(raw["imgs"])
    assert not in_memory.has_spacing and in_memory.spacing == (1.0, 1.0, 1.0)
    assert set(np.load(save_mask(gts, in_memory, tmp_path / "memory_segs.npz")).files) == {"segs"}
    assert Volume(raw["imgs"], spacing=(1.0, 1.0, 1.0)).has_spacing


def test_an_image_is_not_taken_for_a_label_map_but_many_touching_organs_are(tmp_path: Path, ct_case: Volume) -> None:
    """A uint8 CT read as a mask (the wrong file picked) is refused: its texture makes most neighbouring
    voxels differ; so is the CT smoothed and in 32 grey levels, where fewer do, but with that many values. A map of 117 labels that fill the volume and all touch others (a Voronoi partition,
    harder than any organ atlas) is a label map: only its borders differ."""
    assert ct_case.array.dtype == np.uint8
    save_mask(ct_case.array, ct_case, tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match=r"ct.nii.gz: an image, not a label map \(9\d% of neighbouring labelled voxels differ"):
        load_mask(tmp_path / "ct.nii.gz")
    smooth = (ndimage.gaussian_filter(ct_case.array.astype(float), (0, 1, 1)) // 8).astype(np.uint8)
    assert len(np.unique(smooth)) == 32
    save_mask(smooth, ct_case, tmp_path / "ct32.nii.gz")
    with pytest.raises(InputError, match=r"ct32.nii.gz: an image, not a label map \([2-4]\d% of neighbouring"):
        load_mask(tmp_path / "ct32.nii.gz")
    coarse = (ct_case.shape[0], 64, 64)  # built coarse, then each voxel 8x8 (as a resampled atlas would be)
    seeds = np.random.default_rng(0).uniform(0, 1, (117, 3)) * coarse
    grid = np.stack(np.meshgrid(*map(np.arange, coarse), indexing="ij"), axis=-1)
    nearest = np.argmin(np.stack([np.linalg.norm((grid - seed) / (1, 2.5, 2.5), axis=-1) for seed in seeds]), axis=0)
    organs = (nearest + 1).astype(np.uint8).repeat(8, axis=1).repeat(8, axis=2)
    assert organs.shape == ct_case.shape and len(np.unique(organs)) == 117
    save_mask(organs, ct_case, tmp_path / "organs.nii.gz")
    np.testing.assert_array_equal(load_mask(tmp_path / "organs.nii.gz").array, organs)


def test_2d_colour_npz_round_trip(tmp_path: Path, ct_case: Volume) -> None:
    grey = ct_case.array[6]
    imgs = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    gts = ct_case.meta["npz"]["gts"][6]
    source = tmp_path / "slice.npz"
    np.savez(source, imgs=imgs, gts=gts, spacing=np.array([0.5, 0.5, 1.0]))
    volume = load_image(source)
    assert volume.shape == (1, 512, 512) and volume.is_color
    np.testing.assert_array_equal(volume.array[0], imgs)
    written = np.load(save_mask(gts[None], volume, tmp_path / "segs.npz"))
    np.testing.assert_array_equal(written["segs"], gts)  # (H, W), as the input's 2D layout
    np.testing.assert_array_equal(written["spacing"], [0.5, 0.5, 1.0])


# --- ITK formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ITK_SUFFIXES)
def test_itk_formats_round_trip(tmp_path: Path, ct_case: Volume, suffix: str) -> None:
    image_path = tmp_path / f"image{suffix}"
    sitk.WriteImage(to_sitk(ct_case), str(image_path))
    image = load_image(image_path)
    assert_same_volume(image, ct_case)

    gts = ct_case.meta["npz"]["gts"]
    mask = load_image(save_mask(gts, image, tmp_path / f"mask{suffix}"))
    assert mask.array.dtype == np.uint8
    np.testing.assert_array_equal(mask.array, gts)
    assert_same_volume(mask.with_array(image.array), image)
    assert not [name for name in visible_files(tmp_path) if name.startswith(".")]


def test_labels_above_255_are_stored_as_uint16(tmp_path: Path, ct_case: Volume) -> None:
    labels = ct_case.meta["npz"]["gts"].astype(np.int64) * 300
    mask = load_image(save_mask(labels, ct_case, tmp_path / "mask.nii.gz"))
    assert mask.array.dtype == np.uint16
    np.testing.assert_array_equal(mask.array, labels)


def test_oblique_nifti_mask_overlays_the_image_in_world_space(tmp_path: Path, ct_case: Volume) -> None:
    rotation = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    oblique = Volume(ct_case.array, spacing=(0.8, 0.7, 2.5), origin=(-120.5, 33.25, 410.0),
                     direction=tuple(rotation.ravel()))
    image_path = tmp_path / "oblique.nii.gz"
    sitk_image = to_sitk(oblique)
    sitk.WriteImage(sitk_image, str(image_path))
    image = load_image(image_path)
    np.testing.assert_allclose(image.direction_matrix, rotation, atol=1e-5)

    gts = ct_case.meta["npz"]["gts"]
    mask_path = save_mask(gts, image, tmp_path / "mask.nii.gz")
    mask = load_image(mask_path)
    lesion = np.argwhere(gts)
    voxels = np.vstack([lesion[0], lesion[-1], [12, 511, 0]])  # (k, i, j)
    expected = np.array([sitk_image.TransformIndexToPhysicalPoint([int(j), int(i), int(k)]) for k, i, j in voxels])
    np.testing.assert_allclose(image.index_to_world(voxels), expected, atol=1e-3)
    np.testing.assert_allclose(mask.index_to_world(voxels), image.index_to_world(voxels), atol=1e-4)

    # Independently of SimpleITK: nibabel's RAS affine over (x, y, z) = (j, i, k) indices.
    nifti = nib.load(mask_path)
    ras = nib.affines.apply_affine(nifti.affine, voxels[:, ::-1])
    np.testing.assert_allclose(ras * [-1, -1, 1], expected, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), gts)


# --- DICOM ----------------------------------------------------------------------------------------


def test_dicom_series_npz_and_nifti_of_one_case_load_identically(
    tmp_path: Path, ct_lesion_cases: list[Path], write_dicom_series: Callable[..., list[Path]]
) -> None:
    case = load_image(ct_lesion_cases[0])  # 16 slices
    folder = tmp_path / "dicom"
    files = write_dicom_series(case, folder)
    write_dicom_series(load_image(ct_lesion_cases[2]), folder, seed=1)  # 13 slices, another series
    assert sorted(files) != files  # names alone would give the wrong slice order

    series = load_image(folder)
    assert series.modality == "CT"
    assert series.meta["dicom_files"] == [str(file) for file in files]
    assert_same_volume(series, case)  # also proves RescaleIntercept was applied

    nifti_path = tmp_path / "case.nii.gz"
    sitk.WriteImage(to_sitk(case), str(nifti_path))
    assert_same_volume(load_image(nifti_path), series)


def test_a_monochrome1_ct_keeps_its_hounsfield_units(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """MONOCHROME1 says how to show the pixels (high values dark), not what they measure: GDCM's
    inversion is undone for CT, so the series (and one of its files) reads as the MONOCHROME2 one."""
    plain, inverted = write_dicom_series(ct_case, tmp_path / "plain"), write_dicom_series(ct_case, tmp_path / "mono1")
    for file in inverted:
        dataset = pydicom.dcmread(file)
        dataset.PhotometricInterpretation = "MONOCHROME1"
        dataset.save_as(file)
    np.testing.assert_array_equal(load_image(tmp_path / "mono1").array, load_image(tmp_path / "plain").array)
    np.testing.assert_array_equal(load_image(inverted[5]).array, load_image(plain[5]).array)


def test_a_disc_export_with_its_dicomdir_names_the_series_folder_to_give(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A CD/USB export: a DICOMDIR index beside PT*/ST*/SE* folders. The export's folder, or the
    DICOMDIR, names a series folder to give (were 'no DICOM image series' / 'damaged or cut short')."""
    from pydicom.fileset import FileSet

    export = FileSet()
    for file in write_dicom_series(ct_case, tmp_path / "series"):
        export.add(str(file))
    export.write(str(tmp_path / "disc"))
    series = next(path.parent for path in (tmp_path / "disc").rglob("*") if path.is_file() and path.name != "DICOMDIR")
    with pytest.raises(InputError, match=f"disc: its DICOM images are in sub-folders; give a series folder, e.g. {series}"):
        load_image(tmp_path / "disc")
    with pytest.raises(InputError, match="DICOMDIR: a DICOMDIR, the index of a disc's or drive's images; give a series folder"):
        load_image(tmp_path / "disc" / "DICOMDIR")
    np.testing.assert_array_equal(load_image(series).array, ct_case.array)


def test_two_equal_series_or_two_echoes_in_one_folder_are_named_not_guessed_between(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """Two reconstructions of a scan (as many images each) are refused naming both, not picked by
    UID order; a dual-echo series is named as such (was 'slices are missing, damaged or repeated')."""
    write_dicom_series(ct_case, tmp_path / "tie")
    write_dicom_series(ct_case, tmp_path / "tie", seed=1)
    with pytest.raises(InputError, match=r"tie: 2 series of 13 images each \(series 1 \(CT, e\.g\. \S+\.dcm\); series 1 \(CT, e\.g\. \S+\.dcm\)\); put the one") as refused:
        load_image(tmp_path / "tie")
    # Two series of one number (or none: SeriesNumber is type 2) are told apart by a file of each.
    named = re.findall(r"e\.g\. (\S+\.dcm)\)", str(refused.value))
    assert len(set(named)) == 2
    assert {pydicom.dcmread(tmp_path / "tie" / name).SeriesInstanceUID for name in named} == {
        pydicom.dcmread(file).SeriesInstanceUID for file in (tmp_path / "tie").iterdir()
    }
    blank = tmp_path / "tie_unnumbered"
    for file in (tmp_path / "tie").iterdir():
        dataset = pydicom.dcmread(file)
        dataset.SeriesNumber = None
        blank.mkdir(exist_ok=True)
        dataset.save_as(blank / file.name)
    with pytest.raises(InputError, match=r"\(series \? \(CT, e\.g\. \S+\.dcm\); series \? \(CT, e\.g\. \S+\.dcm\)\)"):
        load_image(blank)
    # Separate images (a radiograph per file) are not a scan: one file is to be given.
    stills = tmp_path / "stills"
    stills.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(packaged_file("pydicom", f"pydicom/data/test_files/{name}", "pip install pydicom"), stills / name)
    with pytest.raises(InputError, match=f"stills: 2 separate DICOM images, each a series of its own; give one file, e.g. {stills}/"):
        load_image(stills)
    first, second = write_dicom_series(ct_case, tmp_path / "echoes"), write_dicom_series(ct_case, tmp_path / "echoes", seed=1)
    series = pydicom.dcmread(first[0]).SeriesInstanceUID
    for echo, files in ((1, first), (2, second)):
        for file in files:
            dataset = pydicom.dcmread(file)
            dataset.SeriesInstanceUID, dataset.EchoNumbers = series, echo
            dataset.save_as(file)
    with pytest.raises(InputError, match=r"echoes: the series holds 2 echoes \(1, 2\) over the same positions; put one echo's files"):
        load_image(tmp_path / "echoes")


def test_a_gantry_tilted_series_is_refused(tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]) -> None:
    """Slices stacked obliquely to their planes (a CT gantry tilted 15 degrees): ITK's grid, square to
    the planes, would place the last slice a centimetre off; refused in one line, not misplaced."""
    for k, file in enumerate(write_dicom_series(ct_case, tmp_path / "tilt")):
        dataset = pydicom.dcmread(file)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + k * 5.0 * np.tan(np.radians(15)), z]  # the table moves, the planes stay
        dataset.save_as(file)
    with pytest.raises(InputError, match=r"a gantry-tilted series \(its slices stack 15.0 degrees off their normal\)"):
        load_image(tmp_path / "tilt")


def test_dicom_files_written_without_preamble_read_as_with_it(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """Older scanners and PACS exports write DICOM without the 128-byte preamble and file meta group,
    often in files without a suffix: such a series reads as the same series written with them, and
    a mask is written on it as a DICOM-SEG (they were "no DICOM files in this folder")."""
    files = write_dicom_series(ct_case, tmp_path / "with")
    bare = tmp_path / "without"
    bare.mkdir()
    for index, file in enumerate(files):
        dataset = pydicom.dcmread(file)
        dataset.preamble, dataset.file_meta = None, pydicom.dataset.FileMetaDataset()
        dataset.save_as(bare / f"IM{index:04d}", implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not pydicom.misc.is_dicom(bare / "IM0000")
    series = load_image(bare)
    assert_same_volume(series, load_image(tmp_path / "with"))
    assert series.modality == "CT"
    assert_same_volume(load_image(bare / "IM0003"), load_image(files[3]))
    mask = (series.array > 0).astype(np.uint8)
    save_mask(mask, series, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(load_mask(tmp_path / "seg.dcm", like=series).array, mask)


def test_a_series_with_a_file_cut_short_is_refused_naming_it(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A file of a series holding fewer pixels than its header states (written cut short, its Pixel
    Data's length saying so) was read by GDCM with zeros where its pixels are missing, a slice of
    wrong values in the scan: the check refusing it ran only for a single file. The series is now
    refused in one line naming the file; `medsam2 info` says so and fails."""
    files = write_dicom_series(ct_case, tmp_path / "series")
    cut = files[5]
    dataset = pydicom.dcmread(cut)
    dataset.PixelData = dataset.PixelData[:-100000]
    dataset.save_as(cut)
    with pytest.raises(InputError, match=f"^{re.escape(str(cut))}: its pixel data is cut short: .*, the whole file has"):
        load_image(tmp_path / "series")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "series")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{cut}: its pixel data is cut short" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_series_rescaled_slice_by_slice_keeps_each_slices_fractional_values(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A PET's slices each have their own Rescale Slope; a first slice of slope 1 (an empty end slice)
    made ITK read the whole series as integers, truncating every other slice's values."""
    files = write_dicom_series(ct_case, tmp_path / "pet")
    expected = []
    for k, file in enumerate(files):
        dataset = pydicom.dcmread(file)
        dataset.RescaleSlope = 1 if k == 0 else 0.25 + 0.01 * k
        dataset.save_as(file)
        expected.append(dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept))
    np.testing.assert_allclose(load_image(tmp_path / "pet").array, np.array(expected))


def test_a_localizer_filed_in_the_series_is_named(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A localizer (another plane or size) sharing the series' UID was refused as "slices are missing"
    or as a gantry tilt, or, of another size, as "cannot read (Size: [...])"; it is named instead."""
    files = write_dicom_series(ct_case, tmp_path / "plane")
    dataset = pydicom.dcmread(files[0])
    dataset.ImageOrientationPatient, dataset.ImagePositionPatient = [1, 0, 0, 0, 0, -1], [0, 40, 90]
    dataset.save_as(tmp_path / "plane" / "localizer")
    with pytest.raises(InputError, match=r"plane/localizer: an image of orientation \(1.0, 0.0, 0.0, 0.0, 0.0, -1.0\) in a series of 13 images"):
        load_image(tmp_path / "plane")
    files = write_dicom_series(ct_case, tmp_path / "size")
    dataset = pydicom.dcmread(files[0])
    dataset.Rows, dataset.PixelData = dataset.Rows // 2, dataset.pixel_array[: dataset.Rows // 2].tobytes()
    dataset.save_as(files[0])
    columns, rows = ct_case.shape[2], ct_case.shape[1]
    with pytest.raises(InputError, match=rf"{files[0].name}: an image of size {columns}x{rows // 2} in a series of 12 images of size {columns}x{rows} "):
        load_image(tmp_path / "size")


def test_dicom_series_with_a_damaged_slice_is_refused(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]], capfd: pytest.CaptureFixture[str]
) -> None:
    """GDCM leaves a file it cannot read out of the series without a word: a damaged file is named,
    wherever it lies in the series (at either end no gap would show), and a missing slice shows as
    a gap."""
    for index in (0, 5, -1):
        folder = tmp_path / f"damaged_{index}"
        files = write_dicom_series(ct_case, folder)
        damaged = files[index].read_bytes()
        files[index].write_bytes(damaged[: len(damaged) - 1000])
        with pytest.raises(InputError, match=rf"{files[index].name}: a file of the series that cannot be read \(damaged or cut short\)"):
            load_image(folder)
    files = write_dicom_series(ct_case, tmp_path / "header")
    files[0].write_bytes(files[0].read_bytes()[:200])  # not even its header is whole
    with pytest.raises(InputError, match=rf"{files[0].name}: a damaged DICOM file in header/ \(its header ends early\)"):
        load_image(tmp_path / "header")
    files = write_dicom_series(ct_case, tmp_path / "dicom")
    files[5].unlink()
    with pytest.raises(InputError, match=r"dicom: slice gaps range from 5 to 10 mm") as error:
        load_image(tmp_path / "dicom")
    assert "\n" not in str(error.value)
    assert "Non uniform sampling" not in capfd.readouterr().err  # ITK's own warning, saying the same, kept quiet


def test_dicom_seg_of_a_series_reads_back_frame_by_frame(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    write_dicom_series(ct_case, tmp_path / "dicom")
    series = load_image(tmp_path / "dicom")
    labels = ct_case.meta["npz"]["gts"].copy()
    labels[:, :, 256:][labels[:, :, 256:] == 1] = 2  # two segments

    names = {2: "Läsion links (" + "x" * 60 + ")", 7: "not in the map"}  # object 1 has no name
    seg = hd.seg.segread(save_mask(labels, series, tmp_path / "seg.dcm", names=names))
    assert seg.SegmentationType == "BINARY"
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == ["label 1", names[2][:64]]
    # Its frames are the series' non-empty slices: read back against the series, it is the label map.
    read_back = load_mask(tmp_path / "seg.dcm", like=series)
    np.testing.assert_array_equal(read_back.array, labels)
    assert read_back.array.dtype == np.uint8  # as compact as the map written
    assert label_names(read_back) == {2: names[2][:64]}  # the placeholder of an unnamed one is no name
    assert (read_back.spacing, read_back.origin, read_back.direction) == (series.spacing, series.origin, series.direction)
    with pytest.raises(InputError, match="seg.dcm: a DICOM-SEG is read against the DICOM series it segments, and none is given"):
        load_mask(tmp_path / "seg.dcm")
    # Given as an image, it was read as one of 0/255 and segmented as a scan.
    with pytest.raises(InputError, match=r"seg.dcm: a DICOM-SEG \(a mask drawn on a series\), not an image: open the series it segments"):
        load_image(tmp_path / "seg.dcm")
    with pytest.raises(InputError, match=r"segments, not .*035-047\.npz \(not read from DICOM files\)$"):
        load_mask(tmp_path / "seg.dcm", like=ct_case)  # the same scan, from an npz: no series to read it on
    # A SEG referencing only the slices it segments (as other tools write them) reads back the same.
    segmented = np.flatnonzero(labels.any(axis=(1, 2)))
    headers = [pydicom.dcmread(file, stop_before_pixels=True) for file in series.meta["dicom_files"]]
    build_segmentation(labels[segmented], [headers[k] for k in segmented]).save_as(tmp_path / "partial.dcm")
    np.testing.assert_array_equal(load_mask(tmp_path / "partial.dcm", like=series).array, labels)
    # Objects 1 and 3 are two segments (numbered 1 and 2, each naming its object in its Tracking ID),
    # not three with an empty "label 2" between them; they read back as objects 1 and 3.
    gapped = np.where(labels == 2, 3, labels).astype(np.uint8)
    two = hd.seg.segread(save_mask(gapped, series, tmp_path / "gapped.dcm", names={3: "right"}))
    assert [(s.SegmentNumber, s.SegmentLabel, s.TrackingID) for s in two.SegmentSequence] == [(1, "label 1", "object 1"), (2, "right", "object 3")]
    gapped_back = load_mask(tmp_path / "gapped.dcm", like=series)
    np.testing.assert_array_equal(gapped_back.array, gapped)
    assert label_names(gapped_back) == {3: "right"}
    write_dicom_series(ct_case, tmp_path / "other", seed=1)  # the same pixels, other instances
    with pytest.raises(InputError, match="seg.dcm: this DICOM-SEG segments another series"):
        load_mask(tmp_path / "seg.dcm", like=load_image(tmp_path / "other"))
    assert seg.segment_numbers == [1, 2]
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in series.meta["dicom_files"]]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID for source in sources], combine_segments=True)
    np.testing.assert_array_equal(pixels, labels)

    non_empty = sum(int(np.any(labels == label, axis=(1, 2)).sum()) for label in (1, 2))
    assert seg.NumberOfFrames == non_empty
    position_of = {source.SOPInstanceUID: [float(v) for v in source.ImagePositionPatient] for source in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], position_of[source_uid], atol=1e-3
        )


def test_a_dicom_seg_of_images_stating_no_slice_thickness_reads_back(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A series whose SliceThickness an anonymiser blanked or removed (a type 2 attribute) and a
    secondary capture that has none: their SEGs state the slice spacing as thickness, and read back (a SEG
    without one is opened by no reader, highdicom's own included). The patient and study attributes
    of type 2 an anonymiser removed are left empty in the SEG (its writing failed: "its files lack
    the DICOM attribute PatientBirthDate")."""
    for index, file in enumerate(write_dicom_series(ct_case, tmp_path / "blanked")):
        header = pydicom.dcmread(file)
        if index % 2:
            header.SliceThickness = None
        else:
            del header.SliceThickness  # left out altogether
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            delattr(header, keyword)
        header.save_as(file)
    series = load_image(tmp_path / "blanked")
    labels = ct_case.meta["npz"]["gts"]
    read_back = load_mask(save_mask(labels, series, tmp_path / "series_seg.dcm"), like=series)
    np.testing.assert_array_equal(read_back.array, labels)
    seg = pydicom.dcmread(tmp_path / "series_seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(series.spacing[2])
    assert (seg.PatientID, seg.PatientBirthDate, seg.StudyDate) == ("MEDSAM2-TEST", "", "")
    capture = load_image(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    square = np.zeros(capture.shape, np.uint8)
    square[0, 10:40, 20:60] = 1
    np.testing.assert_array_equal(load_mask(save_mask(square, capture, tmp_path / "capture_seg.dcm"), like=capture).array, square)


def test_single_dicom_file_loads_with_modality_and_rescale(tmp_path: Path) -> None:
    path = Path(get_testdata_file("CT_small.dcm"))
    dataset = pydicom.dcmread(path)
    volume = load_image(path)
    assert volume.modality == "CT"
    assert volume.shape == (1, 128, 128)
    np.testing.assert_array_equal(
        volume.array[0], dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    )
    np.testing.assert_allclose(volume.spacing[:2], [float(v) for v in dataset.PixelSpacing][::-1])
    np.testing.assert_allclose(volume.origin, [float(v) for v in dataset.ImagePositionPatient])
    assert load_image(path, modality="mr").modality == "MR"

    no_extension = tmp_path / "IMAGE0001"
    shutil.copy(path, no_extension)
    assert_same_volume(load_image(no_extension), volume)

    mask = (volume.array > 0).astype(np.uint8)
    seg = hd.seg.segread(save_mask(mask, volume, tmp_path / "seg.dcm"))
    pixels = seg.get_pixels_by_source_instance([dataset.SOPInstanceUID], combine_segments=True)
    np.testing.assert_array_equal(pixels, mask)


# --- 2D pictures ----------------------------------------------------------------------------------


def test_grey_and_colour_pictures(tmp_path: Path, ct_case: Volume) -> None:
    grey = ct_case.array[6]
    colour = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    for suffix in (".png", ".bmp", ".tif"):
        Image.fromarray(grey).save(tmp_path / f"grey{suffix}")
        Image.fromarray(colour).save(tmp_path / f"colour{suffix}")
        grey_volume, colour_volume = load_image(tmp_path / f"grey{suffix}"), load_image(tmp_path / f"colour{suffix}")
        assert grey_volume.shape == colour_volume.shape == (1, 512, 512)
        assert not grey_volume.is_color and colour_volume.is_color
        np.testing.assert_array_equal(grey_volume.array[0], grey)
        np.testing.assert_array_equal(colour_volume.array[0], colour)
    Image.fromarray(colour).save(tmp_path / "colour.jpg")
    assert load_image(tmp_path / "colour.jpg").array.shape == (1, 512, 512, 3)

    gts = ct_case.meta["npz"]["gts"][6:7]
    mask = load_image(save_mask(gts, load_image(tmp_path / "colour.png"), tmp_path / "mask.png"))
    assert mask.shape == (1, 512, 512) and not mask.is_color
    np.testing.assert_array_equal(mask.array, gts)


def test_palette_and_one_bit_pictures_are_label_maps_as_masks_and_shown_colours_as_images(tmp_path: Path, ct_case: Volume) -> None:
    """A palette PNG (PASCAL VOC's, CVAT's label maps) stores labels as palette indices, a 1-bit
    PNG as 0/1: read as masks, those are the labels; read as images, what they show."""
    gts = ct_case.meta["npz"]["gts"][6]
    labels = np.where(gts > 0, 1, 0).astype(np.uint8)
    labels[:20, :20] = 2
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "voc.png")
    Image.fromarray(gts > 0).save(tmp_path / "one_bit.png")
    assert Image.open(tmp_path / "one_bit.png").mode == "1"
    np.testing.assert_array_equal(load_mask(tmp_path / "voc.png").array[0], labels)
    np.testing.assert_array_equal(load_mask(tmp_path / "one_bit.png").array[0], gts > 0)
    shown = load_image(tmp_path / "voc.png")
    assert shown.is_color and (shown.array[0][labels == 2] == (0, 255, 0)).all()
    assert set(np.unique(load_image(tmp_path / "one_bit.png").array)) == {0, 255}


# --- geometry check -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["RAS", "PIR", "SLP", "LPI"])
def test_a_mask_stored_in_another_axis_order_is_rearranged_into_the_images(tmp_path: Path, ct_case: Volume, code: str) -> None:
    """The same voxels stored in another order (SimpleITK's DICOMOrient, as a tool saving RAS does)
    are put back in the image's order, voxel for voxel and placed the same; eval scores such a
    pair (was 'origin differs')."""
    mask = Volume((ct_case.meta["npz"]["gts"] > 0).astype(np.uint8), ct_case.spacing, ct_case.origin, ct_case.direction)
    reordered = sitk.DICOMOrient(to_sitk(mask), code)
    stored = Volume(sitk.GetArrayFromImage(reordered), reordered.GetSpacing(), reordered.GetOrigin(), reordered.GetDirection())
    back = in_storage_order_of(stored, mask)
    assert_same_volume(back, mask, atol=1e-6)
    sitk.WriteImage(reordered, str(tmp_path / "gt.nii.gz"))
    save_mask(mask.array, ct_case, tmp_path / "pred.nii.gz")
    scored = CliRunner().invoke(app, ["eval", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--json", str(tmp_path / "s.json")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "s.json").read_text())["cases"][0]["dice"] == 1.0


def test_check_same_geometry(ct_case: Volume) -> None:
    mask = ct_case.with_array(ct_case.meta["npz"]["gts"])
    check_same_geometry(ct_case, mask, "gts vs imgs")
    nudged = Volume(mask.array, spacing=mask.spacing, origin=(0.0, 0.0, 2e-3), direction=mask.direction)
    with pytest.raises(InputError, match="gts vs imgs: origin differs"):
        check_same_geometry(ct_case, nudged, "gts vs imgs")
    with pytest.raises(InputError, match="shape"):
        check_same_geometry(ct_case, Volume(mask.array[:3]), "gts vs imgs")


# --- bad input ------------------------------------------------------------------------------------


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def _missing(tmp: Path, _: Path) -> Path:
    return tmp / "missing.nii.gz"


def _truncated_nifti(tmp: Path, case: Path) -> Path:
    sitk.WriteImage(to_sitk(load_image(case)), str(tmp / "whole.nii.gz"))
    return _truncated(tmp / "whole.nii.gz", tmp / "truncated.nii.gz")


def _truncated_npz(tmp: Path, case: Path) -> Path:
    return _truncated(case, tmp / "truncated.npz")


def _truncated_png(tmp: Path, case: Path) -> Path:
    Image.fromarray(np.load(case)["imgs"][0]).save(tmp / "whole.png")
    return _truncated(tmp / "whole.png", tmp / "truncated.png")


def _truncated_mha(tmp: Path, case: Path) -> Path:
    sitk.WriteImage(to_sitk(load_image(case)), str(tmp / "whole.mha"))
    return _truncated(tmp / "whole.mha", tmp / "truncated.mha")


def _mhd_without_its_data(tmp: Path, case: Path) -> Path:
    sitk.WriteImage(to_sitk(load_image(case)), str(tmp / "alone.mhd"))
    (tmp / "alone.raw").unlink()
    return tmp / "alone.mhd"


def _truncated_dicom_file(tmp: Path, _: Path) -> Path:
    return _truncated(Path(get_testdata_file("CT_small.dcm")), tmp / "truncated.dcm")


def _rt_structure_set(tmp: Path, _: Path) -> Path:
    return Path(get_testdata_file("rtstruct.dcm"))


def _dicom_without_class_or_pixels(tmp: Path, _: Path) -> Path:
    return Path(get_testdata_file("no_meta.dcm"))


def _not_an_nrrd(tmp: Path, _: Path) -> Path:
    (tmp / "garbage.nrrd").write_text("this is not an image\n")
    return tmp / "garbage.nrrd"


def _unsupported_suffix(tmp: Path, _: Path) -> Path:
    (tmp / "notes.txt").write_text("hello")
    return tmp / "notes.txt"


def _nifti_4d(tmp: Path, _: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), tmp / "timeseries.nii.gz")
    return tmp / "timeseries.nii.gz"


def _nifti_with_nan(tmp: Path, _: Path) -> Path:
    data = np.zeros((8, 8, 4), np.float32)
    data[2, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp / "nan.nii.gz")
    return tmp / "nan.nii.gz"


def _npz_with_inf(tmp: Path, _: Path) -> Path:
    np.savez(tmp / "inf.npz", imgs=np.array([[[0.0, np.inf]]]))
    return tmp / "inf.npz"


def _npz_with_a_flat_direction(tmp: Path, _: Path) -> Path:
    np.savez(tmp / "flat.npz", imgs=np.zeros((2, 4, 4), np.uint8), direction=np.zeros(9))
    return tmp / "flat.npz"


def _npz_without_imgs(tmp: Path, case: Path) -> Path:
    np.savez(tmp / "gts_only.npz", gts=np.load(case)["gts"])
    return tmp / "gts_only.npz"


def _folder_without_dicom(tmp: Path, _: Path) -> Path:
    (tmp / "no_dicom").mkdir()
    (tmp / "no_dicom" / "readme.txt").write_text("no images here")
    return tmp / "no_dicom"


def _empty_folder(tmp: Path, _: Path) -> Path:
    (tmp / "empty_folder").mkdir()
    return tmp / "empty_folder"


@pytest.mark.parametrize(
    "make_bad_input",
    [
        _missing, _truncated_nifti, _truncated_npz, _truncated_png, _truncated_mha, _mhd_without_its_data, _truncated_dicom_file,
        _not_an_nrrd,
        _unsupported_suffix, _nifti_4d,
        _nifti_with_nan, _npz_with_inf, _npz_with_a_flat_direction, _npz_without_imgs, _folder_without_dicom, _empty_folder,
        _rt_structure_set, _dicom_without_class_or_pixels,
    ],
)
def test_bad_input_raises_a_one_line_input_error(
    tmp_path: Path, ct_lesion_cases: list[Path], make_bad_input: Callable[[Path, Path], Path], capfd: pytest.CaptureFixture[str]
) -> None:
    path = make_bad_input(tmp_path, ct_lesion_cases[1])
    capfd.readouterr()
    with pytest.raises(InputError) as error:
        load_image(path)
    message = str(error.value)
    assert path.name in message and "\n" not in message, message
    assert capfd.readouterr().err == ""  # the libraries' own complaints (MetaIO prints them itself) kept back
    if make_bad_input is _truncated_npz:
        assert "a truncated or damaged npz archive" in message, message
    if make_bad_input is _truncated_dicom_file:
        assert "its pixel data is cut short: the header states 1 frame(s) of 128x128 pixels (32768 bytes)" in message, message
    if make_bad_input is _rt_structure_set:  # intact, but of a class without images: not called damaged
        assert message.endswith(": a DICOM RT Structure Set, which holds no image"), message
    if make_bad_input is _dicom_without_class_or_pixels:  # was "damaged, cut short or encoded in a way it does not know"
        assert message.endswith(": a DICOM file of no stated class and without pixel data, which holds no image"), message
    if make_bad_input is _nifti_with_nan:
        assert message.endswith(": NaN or infinite values in 1 voxel"), message
    if make_bad_input is _nifti_4d:  # the shape in the package's (Z, Y, X) order, as everywhere else
        assert "4D image holding 2 volumes of (Z, Y, X) (4, 8, 8)" in message, message
    if make_bad_input is _empty_folder:  # `segment` reads a folder of pictures as a video: say both
        assert message.endswith(": the folder is empty (a scan's folder holds its DICOM files; a video's, its frames as pictures)"), message
    if make_bad_input is _folder_without_dicom:
        assert message.endswith(": no DICOM files in this folder (a video's frames would be PNG/JPEG/BMP/TIFF pictures)"), message


def test_unknown_modality_is_an_input_error_and_names_people_say_are_known(ct_lesion_cases: list[Path]) -> None:
    with pytest.raises(InputError, match=f"{ct_lesion_cases[0].name}: modality 'xray': choose one of CT, MR, MRI, PT, PET"):
        load_image(ct_lesion_cases[0], modality="xray")
    assert [load_image(ct_lesion_cases[0], modality=name).modality for name in ("pet", "MRI", "spect")] == ["PT", "MR", "NM"]


def test_a_new_file_is_never_written_over_one_that_arrived_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "case_mask.nii.gz"
    with atomic_new_path(target) as staged:
        assert staged.name.endswith(".nii.gz") and staged.name.startswith(".")
        staged.write_text("mine")
    assert target.read_text() == "mine"
    with pytest.raises(FileExistsError), atomic_new_path(target) as staged:
        staged.write_text("second")
    other = tmp_path / "other_mask.nii.gz"
    with pytest.raises(FileExistsError), atomic_new_path(other) as staged:
        staged.write_text("late")
        other.write_text("another writer's, saved while this one wrote")
    assert other.read_text().startswith("another writer's") and sorted(p.name for p in tmp_path.iterdir()) == ["case_mask.nii.gz", "other_mask.nii.gz"]


def test_failed_writes_leave_nothing_behind(tmp_path: Path, ct_case: Volume, write_dicom_series: Callable) -> None:
    gts = ct_case.meta["npz"]["gts"]
    out = tmp_path / "out"
    out.mkdir()
    bad_writes: list[tuple[np.ndarray, Volume, str]] = [
        (gts[:5], ct_case, "mask.nii.gz"),  # shape mismatch
        (gts, ct_case, "mask.png"),  # 13 slices into a PNG
        (gts, ct_case, "mask.dcm"),  # DICOM-SEG for an npz image
        (gts, ct_case, "mask.jpg"),  # unsupported mask format
        (gts.astype(np.int16) - 1, ct_case, "mask.nii.gz"),  # negative labels
        (gts * 0.5, ct_case, "mask.nii.gz"),  # fractional labels
    ]
    for mask, like, name in bad_writes:
        with pytest.raises(InputError) as error:
            save_mask(mask, like, out / name)
        assert name in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert visible_files(out) == []

    # A folder in the way is named as such, and left as it was.
    (out / "taken.nii.gz").mkdir()
    with pytest.raises(InputError, match="taken.nii.gz: is a folder"):
        save_mask(gts, ct_case, out / "taken.nii.gz")
    assert visible_files(out) == ["taken.nii.gz"] and not any((out / "taken.nii.gz").iterdir())

    # DICOM-SEG whose source files have gone: names the source, writes nothing.
    files = write_dicom_series(ct_case, tmp_path / "dicom")
    series = load_image(tmp_path / "dicom")
    files[3].unlink()
    with pytest.raises(InputError, match="dicom: cannot re-read"):
        save_mask(gts, series, out / "seg.dcm")
    assert visible_files(out) == ["taken.nii.gz"]


def test_outputs_land_together_or_not_at_all(tmp_path: Path, ct_case: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MetaImage mask (header + data file) and a report written as one group: on an error in the
    group nothing lands (the earlier report stays) and the message names the user's path; on success
    the header names its data file and a folder output replaces the earlier folder."""
    gts = ct_case.meta["npz"]["gts"]
    (tmp_path / "report.csv").write_text("earlier\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"^mask.mhd: mask shape \(5, 512, 512\) does not match"):
        with outputs_together([Path("mask.mhd"), tmp_path / "report.csv", None]) as (mask, report, nothing):
            assert nothing is None and report.name == "report.csv" and report.parent.parent == tmp_path
            report.write_text("new\n")
            save_mask(gts[:5], ct_case, mask)
    assert visible_files(tmp_path) == ["report.csv"] and (tmp_path / "report.csv").read_text() == "earlier\n"

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "earlier.json").write_text("{}")
    with outputs_together([tmp_path / "mask.mhd", tmp_path / "export"]) as (mask, export):
        save_mask(gts, ct_case, mask)
        export.mkdir()
        (export / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mask.mhd", "mask.zraw", "report.csv"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["manifest.json"]
    np.testing.assert_array_equal(load_image(tmp_path / "mask.mhd").array, gts)

    # A folder where a file output goes: refused before any work unless that output is a folder,
    # and, should one appear meanwhile, before any output of the group lands.
    (tmp_path / "table.csv").mkdir()
    with pytest.raises(InputError, match="^table.csv: a folder is there, and this output is a file"):
        check_output_paths([], [Path("mask.nii.gz"), Path("table.csv")])
    check_output_paths([], [Path("table.csv")], folders=[tmp_path / "table.csv"])
    with pytest.raises(InputError, match="table.csv: a folder is there, and this output is a file"):
        with outputs_together([tmp_path / "new.mhd", tmp_path / "table.csv"]) as (mask, table):
            save_mask(gts, ct_case, mask)
            table.write_text("a,b\n")
    assert not (tmp_path / "new.mhd").exists() and not list((tmp_path / "table.csv").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mask.mhd", "mask.zraw", "report.csv", "table.csv"]


def test_atomic_outputs_get_the_umasks_permissions(tmp_path: Path) -> None:
    # A shared project folder needs its reports and exports readable by the group, as any file
    # written directly would be: the temporary file or folder must not stay private (0600/0700).
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "report.csv", "a,b\n")
        for round_ in range(2):  # the second replaces the first folder
            with atomic_folder(tmp_path / "export") as staging:
                (staging / f"manifest{round_}.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.csv").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "report.csv"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["manifest1.json"]


def test_outputs_through_links_and_devices(tmp_path: Path) -> None:
    """A symbolic link keeps pointing at its file, which is replaced; a device (/dev/null, a pipe
    such as /dev/stdout) is written to, not replaced by a file."""
    (tmp_path / "target.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to("target.csv")
    atomic_write_text(tmp_path / "link.csv", "new\n")
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "target.csv").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "target.csv"]
    null = Path("/dev/null")
    check_output_paths([], [null])
    atomic_write_text(null, "nothing\n")
    assert null.is_char_device()
    # /dev/stdout redirected to a file (`>> log`) leads to that file: written through the open
    # descriptor, the log keeps what it held and what comes after lands after it.
    log = tmp_path / "run.log"
    log.write_text("old\n")
    script = (
        "from medsam2.io.atomic import atomic_write_text, outputs_together\n"
        "print('printed', flush=True)\n"
        "atomic_write_text('/dev/stdout', 'atomic\\n')\n"
        "with outputs_together(['/dev/stdout', None]) as (target, _):\n"
        "    target.write_text('together\\n')\n"
        "print('after')\n"
    )
    with log.open("a") as appended:
        subprocess.run([sys.executable, "-c", script], stdout=appended, check=True)
    assert log.read_text() == "old\nprinted\natomic\ntogether\nafter\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "run.log", "target.csv"]


@pytest.mark.parametrize("layout", ["sform and qform apart", "sform only, pixdim 1", "negative pixdim"])
def test_a_nifti_is_placed_where_nibabel_and_fsl_place_it(tmp_path: Path, ct_case: Volume, layout: str) -> None:
    """The sform when set (else the qform), as nibabel, FSL and the mask writer (which copies the
    header) read it: SimpleITK took the qform, dropped an sform whose scales differ from pixdim, and
    flipped a negative pixdim's axis the other way. Masks in any format then read back in place."""
    affine = np.diag([*ct_case.spacing, 1.0])
    affine[:3, 3] = [-124.0, -150.0, -100.0]
    image = nib.Nifti1Image(ct_case.array.T.astype(np.int16), None)
    if layout == "sform and qform apart":  # as a registration leaves it
        image.set_qform(affine, code="scanner")
        moved = affine.copy()
        moved[:3, 3] += [10.0, -20.0, 30.0]
        image.set_sform(moved, code="aligned")
        affine = moved
    elif layout == "sform only, pixdim 1":
        image.set_sform(affine, code="scanner")
        image.header.set_zooms((1.0, 1.0, 1.0))
        image.header["qform_code"] = 0
    else:
        affine[0, 0] = -affine[0, 0]
        image.set_sform(affine, code="aligned")
        image.header["pixdim"][1] = -ct_case.spacing[0]
    path = tmp_path / "scan.nii.gz"
    nib.save(image, path)
    volume = load_image(path)
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(volume.spacing, np.abs(np.diag(affine)[:3]), atol=1e-5)
    np.testing.assert_allclose(volume.origin, lps @ affine[:3, 3], atol=1e-4)
    np.testing.assert_allclose(volume.direction_matrix, lps @ np.diag(np.sign(np.diag(affine)[:3])), atol=1e-6)
    mask = (ct_case.meta["npz"]["gts"] > 0).astype(np.uint8)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        back = load_image(save_mask(mask, volume, tmp_path / f"mask{suffix}"))
        check_same_geometry(back, volume, suffix)
        np.testing.assert_array_equal(back.array, mask)


@pytest.mark.parametrize(
    ("image_suffix", "mask_suffix"), [(".nii.gz", ".nii.gz"), (".nii", ".nii.gz"), (".nii.gz", ".nii")]
)
def test_nifti_mask_keeps_the_images_qform_and_sform(
    tmp_path: Path, ct_case: Volume, image_suffix: str, mask_suffix: str
) -> None:
    # After FSL/ANTs registration the sform (here code 4, MNI) differs from the qform: SimpleITK reads one
    # of them, and a mask written from it alone would sit elsewhere in sform-based tools (nibabel, FSLeyes).
    qform = np.diag([*ct_case.spacing, 1.0])
    qform[:3, :3] = Rotation.from_rotvec([0.1, 0.0, 0.2]).as_matrix() @ qform[:3, :3]
    qform[:3, 3] = [10.0, -20.0, 30.0]
    sform = qform.copy()  # another rotation, a little shear, another origin
    sform[:3, :3] = Rotation.from_rotvec([0.0, -0.15, 0.05]).as_matrix() @ qform[:3, :3]
    sform[0, 1] += 0.01
    sform[:3, 3] = [12.5, -25.0, 40.0]
    raw = nib.Nifti1Image(ct_case.array.T.astype(np.int16) * 8, None)  # an int16 CT with a rescale
    raw.set_qform(qform, code="scanner")
    raw.set_sform(sform, code="mni")
    raw.header.set_slope_inter(1.0, -1024.0)
    raw.header.set_xyzt_units("mm", "sec")
    image_path = tmp_path / f"registered{image_suffix}"
    nib.save(raw, image_path)
    image = load_image(image_path)

    gts = ct_case.meta["npz"]["gts"]
    mask_path = save_mask(gts, image, tmp_path / f"mask{mask_suffix}")
    written, source = nib.load(mask_path).header, nib.load(image_path).header
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                  "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        np.testing.assert_array_equal(written[field], source[field], err_msg=field)
    np.testing.assert_array_equal(written["pixdim"][:4], source["pixdim"][:4])
    voxels = np.asanyarray(nib.load(mask_path).dataobj)  # scaled by the header, were a slope or inter left
    assert voxels.dtype == np.uint8
    np.testing.assert_array_equal(voxels.T, gts)

    mask = load_image(mask_path)
    check_same_geometry(image, mask, f"{mask_path.name} vs {image_path.name}")
    np.testing.assert_array_equal(mask.array, gts)
    assert not [name for name in visible_files(tmp_path) if name.startswith(".")]


def test_jpeg_compressed_dicom_reads_without_the_decoders_chatter(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """GDCM tries a 12-bit JPEG with its 8-bit decoder first, which prints why it turns it down (six
    lines, C level); the image then reads right, as a file and as a one-file series, and nothing is
    printed. A JPEG 2000 file OpenJPEG cannot decode is one error, without OpenJPEG's lines."""
    lossy = Path(get_testdata_file("JPEG-lossy.dcm"))
    (tmp_path / "series").mkdir()
    shutil.copy(lossy, tmp_path / "series" / "slice.dcm")
    capfd.readouterr()
    for source in (lossy, tmp_path / "series"):
        image = load_image(source)
        assert image.shape == (1, 1024, 256) and image.array.max() > 0
        assert image.modality == "NM"  # nuclear medicine, from its tag
    assert capfd.readouterr().err == ""
    with pytest.raises(InputError, match=r"a DICOM file ITK's reader \(GDCM\) cannot read: damaged, cut short or encoded"):
        load_image(Path(get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")))
    assert capfd.readouterr().err == ""


def test_losslessly_compressed_dicom_reads_as_the_uncompressed_file() -> None:
    """JPEG 2000 lossless, JPEG-LS lossless and RLE copies of one MR slice read to the same voxels
    and geometry as the uncompressed file."""
    plain = load_image(Path(get_testdata_file("MR_small.dcm")))
    for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        compressed = load_image(Path(get_testdata_file(name)))
        np.testing.assert_array_equal(compressed.array, plain.array, err_msg=name)
        check_same_geometry(compressed, plain, name)


def test_pixel_encodings_gdcm_decodes_wrongly_are_refused_and_the_others_match_pydicom() -> None:
    """16- and 32-bit colour RLE and 32-bit big-endian pixels came out of GDCM scrambled (red read as
    green and blue; doses of 4e9), without an error; they are refused. Their neighbours (8-bit colour
    RLE, 16-bit big endian, a deflated file: smaller than its pixels, yet not cut short) read as
    pydicom decodes them."""
    for name, what in [
        ("SC_rgb_rle_16bit.dcm", "RLE-compressed colour of more than 8 bits"),
        ("SC_rgb_rle_32bit.dcm", "RLE-compressed colour of more than 8 bits"),
        ("rtdose_expb.dcm", "big-endian 32-bit"),
    ]:
        with pytest.raises(InputError, match=rf"{name}: {what} pixel data, which ITK's DICOM reader \(GDCM\) decodes to wrong values"):
            load_image(Path(get_testdata_file(name)))
    for name in ("SC_rgb_rle.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"):
        dataset = pydicom.dcmread(get_testdata_file(name))
        expected = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
        np.testing.assert_array_equal(load_image(Path(get_testdata_file(name))).array[0], expected, err_msg=name)


def test_a_dicom_image_stating_no_pixel_spacing_has_none(tmp_path: Path) -> None:
    """A secondary capture without PixelSpacing was measured at GDCM's made-up 1 mm (sizes in mL);
    like a PNG it now has no spacing. One stating it keeps it."""
    assert not load_image(Path(get_testdata_file("SC_rgb_jpeg.dcm"))).has_spacing
    assert load_image(Path(get_testdata_file("CT_small.dcm"))).has_spacing
    result = CliRunner().invoke(app, ["info", get_testdata_file("SC_rgb_jpeg.dcm"), "--json"])
    assert json.loads(result.stdout)["spacing_xyz_mm"] is None, result.output


def test_a_multi_frame_image_with_frames_missing_or_shuffled_is_refused(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """An enhanced multi-frame CT made of a series (highdicom's legacy conversion) reads with the
    series' geometry; with a frame taken out, or two swapped, GDCM read it at 1 mm, unoriented and in
    file order without a word: refused in one line, as a series with a gap is."""
    small = Volume(ct_case.array[:6, :64, :64].copy(), spacing=ct_case.spacing, origin=ct_case.origin, direction=ct_case.direction, modality="CT")
    headers = sorted(
        (pydicom.dcmread(file) for file in write_dicom_series(small, tmp_path / "series")),
        key=lambda header: -float(header.ImagePositionPatient[2]),
    )
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        headers, series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced.save_as(tmp_path / "whole.dcm")
    whole = load_image(tmp_path / "whole.dcm")
    np.testing.assert_allclose(whole.spacing, small.spacing, rtol=1e-5)
    frame_bytes = 64 * 64 * 2
    for name, order, message in [
        ("gap.dcm", [0, 1, 3, 4, 5], r"frame gaps range from 5 to 10 mm across its 5 frames"),
        ("shuffled.dcm", [0, 2, 1, 3, 4, 5], r"frame positions go back and forth across its 6 frames"),
    ]:
        broken = pydicom.dcmread(tmp_path / "whole.dcm")
        broken.PixelData = b"".join(broken.PixelData[k * frame_bytes : (k + 1) * frame_bytes] for k in order)
        broken.PerFrameFunctionalGroupsSequence = [broken.PerFrameFunctionalGroupsSequence[k] for k in order]
        broken.NumberOfFrames = len(order)
        broken.save_as(tmp_path / name)
        with pytest.raises(InputError, match=rf"{name}: {message}; frames are missing, repeated or out of order"):
            load_image(tmp_path / name)


def test_a_nifti_2_file_is_named_as_such(tmp_path: Path) -> None:
    nib.save(nib.Nifti2Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), tmp_path / "n2.nii.gz")
    with pytest.raises(InputError, match=r"n2.nii.gz: a NIfTI-2 file, which medsam2 does not read; save it as NIfTI-1"):
        load_image(tmp_path / "n2.nii.gz")


@pytest.mark.parametrize("layout", ["coronal slice, scaled", "sform only, pixdim 1"])
def test_a_2d_nifti_is_placed_by_its_header_and_its_mask_keeps_it(tmp_path: Path, ct_case: Volume, layout: str) -> None:
    """A one-slice NIfTI was read by ITK from the 2x2 in-plane part of its transform: a coronal
    slice (singular 2x2) failed as "cannot read (-0 -0)", an sform whose scales differ from pixdim
    gave pixdim's spacing (distances in eval off by that factor), and the slice's position was lost."""
    slice_ = ct_case.array[6].T.astype(np.int16)  # NIfTI's (x, y)
    lps = np.diag([-1.0, -1.0, 1.0])
    if layout == "coronal slice, scaled":  # x -> R-L, y -> I-S, the slice stacked along A-P
        affine = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 0.0, -3.0, 20.0], [0.0, 0.8, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]])
        image = nib.Nifti1Image(slice_, affine)
        image.header.set_slope_inter(4.0, -1000.0)
        expected = slice_.T * np.float32(4.0) - np.float32(1000.0)
    else:
        affine = np.diag([-0.5, -0.5, 5.0, 1.0])
        affine[:3, 3] = [40.0, 50.0, -100.0]
        image = nib.Nifti1Image(slice_, None)
        image.set_sform(affine, code="scanner")
        image.header["qform_code"] = 0
        image.header["pixdim"][1:4] = 1.0
        expected = slice_.T
    path = tmp_path / "slice.nii.gz"
    nib.save(image, path)
    volume = load_image(path)
    assert volume.meta["is_2d"] and volume.shape == (1, *slice_.T.shape)
    np.testing.assert_allclose(volume.array[0], expected)
    axes = lps @ affine[:3, :3]
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(axes, axis=0), atol=1e-6)
    np.testing.assert_allclose(volume.direction_matrix, axes / np.linalg.norm(axes, axis=0), atol=1e-6)
    np.testing.assert_allclose(volume.origin, lps @ affine[:3, 3], atol=1e-6)

    mask = (ct_case.meta["npz"]["gts"][6:7] > 0).astype(np.uint8)
    written = nib.load(save_mask(mask, volume, tmp_path / "mask.nii.gz"))
    assert written.shape == slice_.shape
    np.testing.assert_allclose(written.affine, nib.load(path).affine, atol=1e-6)
    back = load_image(tmp_path / "mask.nii.gz")
    check_same_geometry(back, volume, "2D NIfTI mask")
    np.testing.assert_array_equal(back.array, mask)
    # A 2D NRRD would hold neither a coronal slice's orientation nor a slice's height: one slice of 3D does.
    nrrd = load_image(save_mask(mask, volume, tmp_path / "mask.nrrd"))
    check_same_geometry(nrrd, volume, "NRRD mask of a 2D NIfTI")
    np.testing.assert_array_equal(nrrd.array, mask)


def test_an_itk_message_over_several_lines_is_given_whole(tmp_path: Path, ct_case: Volume) -> None:
    """ITK writes a matrix row by row: the error named only its last row ("cannot read (0 0 1)")."""
    header = (
        "ObjectType = Image\nNDims = 3\nTransformMatrix = 1 0 0 0 0 0 0 0 1\nOffset = 0 0 0\n"
        "ElementSpacing = 0.977 0.977 5\nDimSize = 512 512 1\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / "singular.mha"
    path.write_bytes(header.encode() + ct_case.array[6].tobytes())
    with pytest.raises(InputError) as error:
        load_image(path)
    assert str(error.value) == (
        f"{path}: cannot read (Bad direction, determinant is 0. Refusing to change direction from 1 0 0 0 1 0 0 0 1 "
        "to 1 0 0 0 0 0 0 0 1)"
    )


def test_the_mask_of_a_2d_nrrd_is_2d_with_its_geometry(tmp_path: Path) -> None:
    """Was written as a 3D mask of one slice (a third spacing, origin and direction row of its own)."""
    image = sitk.GetImageFromArray(np.arange(20 * 30, dtype=np.int16).reshape(20, 30))
    image.SetSpacing((0.7, 0.9))
    image.SetOrigin((4.0, -2.0))
    image.SetDirection((0.6, -0.8, 0.8, 0.6))
    sitk.WriteImage(image, str(tmp_path / "picture.nrrd"))
    volume = load_image(tmp_path / "picture.nrrd")
    save_mask(volume.array > 300, like=volume, path=tmp_path / "mask.nrrd")
    mask = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert mask.GetDimension() == 2 and mask.GetSize() == (30, 20)
    for got, wanted in ((mask.GetSpacing(), image.GetSpacing()), (mask.GetOrigin(), image.GetOrigin()), (mask.GetDirection(), image.GetDirection())):
        np.testing.assert_allclose(got, wanted, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(image) > 300)


def test_a_failed_metaimage_read_drops_only_metaio_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """MetaIO prints its complaints to file descriptor 2 itself; holding them back must not swallow
    what another thread (a server's log) printed in that moment."""
    capfd.readouterr()
    with pytest.raises(RuntimeError), native_lines_dropped(on_failure=METAIO_COMPLAINTS):
        os.write(2, b"INFO: a request of another session\n")
        os.write(2, b"MetaImage: M_ReadElementsData: data not read completely\n   ideal = 8000 : actual = 7500\n")
        raise RuntimeError("the read failed")
    assert capfd.readouterr().err == "INFO: a request of another session\n"
    with native_lines_dropped(on_failure=METAIO_COMPLAINTS):  # a read that succeeds keeps everything
        os.write(2, b"MetaImage: a note\n")
    assert capfd.readouterr().err == "MetaImage: a note\n"


def test_a_path_from_home_and_a_float16_mask_are_taken_as_users_mean_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"~/mask.nii.gz" from Python is in the home folder (a folder named ~ was made in the working
    one); a float16 mask of whole numbers is written without numpy's overflow warning."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    image = Volume(np.zeros((2, 8, 8), np.int16))
    mask = np.zeros((2, 8, 8), np.float16)
    mask[0, 2:4, 2:4] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = save_mask(mask, image, "~/mask.nii.gz")
    assert written == tmp_path / "home" / "mask.nii.gz" and not (tmp_path / "~").exists()
    assert load_image("~/mask.nii.gz").array.sum() == 4


def test_an_rt_dose_reads_as_dose_scaled_by_its_dose_grid_scaling() -> None:
    """GDCM gave an RT Dose's stored integers (1254000 for 1.254 at a Dose Grid Scaling of 1e-6):
    its voxels are now the dose, stored value times the scaling, plain or RLE-compressed."""
    for name in ("rtdose.dcm", "rtdose_rle.dcm"):
        dataset = pydicom.dcmread(get_testdata_file(name))
        expected = dataset.pixel_array * float(dataset.DoseGridScaling)
        dose = load_image(Path(get_testdata_file(name)))
        assert np.issubdtype(dose.array.dtype, np.floating), name
        np.testing.assert_allclose(dose.array, expected, rtol=1e-6, err_msg=name)
        assert dose.array.max() == pytest.approx(1.254, rel=1e-6)


def test_a_one_frame_rt_dose_reads_as_its_dose_plane(tmp_path: Path) -> None:
    """GDCM turned down an RT Dose of one frame (a dose plane: it needs two grid frame offsets for a
    slice spacing) with 'An invalid logic behavior occurred...'; such a plane, plain, RLE or big
    endian, or stating its one frame, now reads with pydicom at its header's place, as dose."""
    for name in ("rtdose_1frame.dcm", "rtdose_rle_1frame.dcm", "rtdose_expb_1frame.dcm"):
        dataset = pydicom.dcmread(get_testdata_file(name))
        plane = load_image(Path(get_testdata_file(name)))
        assert plane.array.shape == (1, 10, 10), name
        np.testing.assert_allclose(plane.array[0], dataset.pixel_array * float(dataset.DoseGridScaling), rtol=1e-6, err_msg=name)
        assert plane.spacing[:2] == (10.0, 10.0) and plane.has_spacing
        np.testing.assert_allclose(plane.origin, [float(v) for v in dataset.ImagePositionPatient])
    dataset = pydicom.dcmread(get_testdata_file("rtdose_1frame.dcm"))
    dataset.NumberOfFrames, dataset.GridFrameOffsetVector = 1, [0.0]
    dataset.save_as(tmp_path / "plane.dcm")
    assert load_image(tmp_path / "plane.dcm").array.max() == pytest.approx(1.254, rel=1e-6)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "plane.dcm"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["shape_zyx"] == [1, 10, 10], result.output


def test_a_multi_frame_image_rescaled_frame_by_frame_reads_as_its_series(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """A legacy-converted enhanced image of a series whose slices have their own Rescale Intercept
    (a PET's are scaled slice by slice) keeps them per frame; GDCM applied one frame's to all, so
    every other frame read 1024 HU off. Its voxels now are the series' own."""
    small = Volume(ct_case.array[:6, :64, :64].copy(), spacing=ct_case.spacing, origin=ct_case.origin, direction=ct_case.direction, modality="CT")
    files = write_dicom_series(small, tmp_path / "series")
    for index, file in enumerate(files[1::2]):  # the same values, stored 1024 higher with an intercept 1024 lower
        header = pydicom.dcmread(file)
        header.PixelData = (header.pixel_array.astype(np.uint16) + 1024).tobytes()
        header.RescaleIntercept = -2048
        header.save_as(file)
    series = load_image(tmp_path / "series")
    np.testing.assert_array_equal(series.array, small.array)
    headers = sorted((pydicom.dcmread(file) for file in files), key=lambda header: -float(header.ImagePositionPatient[2]))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        headers, series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced.save_as(tmp_path / "whole.dcm")
    whole = load_image(tmp_path / "whole.dcm")
    np.testing.assert_array_equal(whole.array[::-1], series.array)


def test_save_mask_takes_a_label_volume_or_a_segment_volume_result(
    tmp_path: Path, ct_case: Volume, write_dicom_series: Callable[..., list[Path]]
) -> None:
    """`save_mask(result.labels, ...)` and `save_mask(result, ...)` were refused with "mask shape ()
    does not match" (np.asarray of an object); the label Volume's array is written, and a Result's
    object names name a DICOM-SEG's segments."""
    from medsam2.engine.api import Result

    labels = ct_case.meta["npz"]["gts"].astype(np.uint16)
    result = Result(labels=ct_case.with_array(labels), names={1: "lesion"})
    for given, name in ((result.labels, "volume.nii.gz"), (result, "result.nii.gz"), (labels, "array.nii.gz")):
        back = load_mask(save_mask(given, ct_case, tmp_path / name), like=ct_case)
        np.testing.assert_array_equal(back.array, labels)
        check_same_geometry(ct_case, back, name)
    write_dicom_series(ct_case, tmp_path / "dicom")
    series = load_image(tmp_path / "dicom")
    on_series = Result(labels=series.with_array(labels), names={1: "lesion"})
    read_back = load_mask(save_mask(on_series, series, tmp_path / "seg.dcm"), like=series)
    np.testing.assert_array_equal(read_back.array, labels)
    assert label_names(read_back) == {1: "lesion"}
    with pytest.raises(InputError, match="mask shape"):
        save_mask(Volume(labels[:2]), ct_case, tmp_path / "short.nii.gz")


def test_load_image_and_load_mask_refuse_an_image_object_in_one_line(tmp_path: Path, ct_case: Volume) -> None:
    """A nibabel or SimpleITK image, an array or None given where a path goes was a TypeError
    ("expected str, bytes or os.PathLike object, not Nifti1Image"); now a one-line InputError that
    says a path is read and how to wrap an array. Paths as str or Path still load."""
    nifti = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for given in (nifti, sitk.Image(4, 4, 4, sitk.sitkUInt8), np.zeros((3, 3, 3)), None):
        for read, name in ((load_image, "load_image"), (load_mask, "load_mask")):
            with pytest.raises(InputError, match=f"{name} reads a file or DICOM folder given by its path, not a {type(given).__name__}") as raised:
                read(given)
            assert "\n" not in str(raised.value)
    written = save_mask(ct_case.meta["npz"]["gts"], ct_case, tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(load_mask(str(written)).array, load_mask(written).array)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr", ".mha"])
def test_a_header_cut_short_by_a_full_disk_is_an_error_and_keeps_the_earlier_mask(tmp_path, monkeypatch, suffix) -> None:
    """ITK checks its writes of voxel data but not of a header: on a disk that filled up as the header
    (the last file of a .mhd/.nhdr pair) was written, sitk.WriteImage returned with a header of 0 bytes,
    and save_mask moved it over the earlier good mask and `segment` said 'wrote'. Seen on a 12k tmpfs."""
    like = Volume(np.zeros((3, 8, 9), np.int16), spacing=(1.0, 1.0, 2.0))
    path = tmp_path / f"mask{suffix}"
    mask = np.zeros(like.shape, np.uint8)
    save_mask(mask, like=like, path=path)
    earlier = {file.name: file.read_bytes() for file in tmp_path.iterdir()}
    real_write = sitk.WriteImage

    def header_cut_short(image, name, *args, **kwargs):  # what ITK leaves on a full disk, no error
        real_write(image, name, *args, **kwargs)
        Path(name).write_bytes(b"")

    monkeypatch.setattr(sitk, "WriteImage", header_cut_short)
    monkeypatch.setattr(os, "statvfs", lambda _path: os.statvfs_result((4096, 4096, 3, 0, 0, 0, 0, 0, 0, 255)))
    mask[1, 2:5, 3:6] = 1
    with pytest.raises(InputError, match=re.escape(f"{path}: cannot write (No space left on device)")):
        save_mask(mask, like=like, path=path)
    assert {file.name: file.read_bytes() for file in tmp_path.iterdir()} == earlier  # no empty header, no stray file
    monkeypatch.undo()
    assert not load_mask(path, like=like).array.any()


def test_a_failure_writing_a_file_staged_beside_an_output_names_that_file(tmp_path) -> None:
    """The --areas plot is staged beside its table: a full disk as the plot was written said
    'a.csv: cannot write', naming the table, which was fine, instead of the plot a.png."""
    table, mask = tmp_path / "a.csv", tmp_path / "m.nii.gz"
    with pytest.raises(InputError) as raised:
        with outputs_together([mask, table]) as (_, staged):
            with atomic_path(staged.with_suffix(".png")) as plot:
                plot.write_text("x")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == f"{tmp_path / 'a.png'}: cannot write (No space left on device)"
    with pytest.raises(InputError) as raised:
        with outputs_together([mask, table]) as (_, staged):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staged))
    assert str(raised.value) == f"{table}: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_a_folder_output_is_filled_is_one_line_and_keeps_the_earlier_folder(tmp_path) -> None:
    """atomic_folder (annotate export's folder) let a full disk's OSError out as it was: `annotate
    export` ended in a traceback naming a hidden staging path. Now a one-line InputError names the
    file in the folder the user gave; the earlier export stays and nothing is left beside it."""
    out = tmp_path / "trainset"
    out.mkdir()
    (out / "manifest.json").write_text("earlier")
    with pytest.raises(InputError) as raised:
        with atomic_folder(out) as staging:
            (staging / "images").mkdir()
            target = staging / "images" / "case1.npz"
            with open(target, "wb"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    assert str(raised.value) == f"{out / 'images' / 'case1.npz'}: cannot write (No space left on device)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trainset"]
    assert (out / "manifest.json").read_text() == "earlier"
