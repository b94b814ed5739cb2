"""Slices are shown as radiologists look at them, whatever order a file stores its axes in: axial
from the feet (patient's right on the screen's left, anterior up), coronal from the front (right on
the left, head up), sagittal from the patient's left (anterior on the left, head up). Engines and
prompts keep each slice's own pixel coordinates; only what a person looks at is turned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam2.engine.api import prepare_slices
from medsam2.io import load_image, slicing_axis_index, to_slices
from medsam2.io.overlay import LABEL_COLOURS, montage_slices, save_overlay_montage
from medsam2.io.samples import mni152_brain
from medsam2.io.volume import (
    SliceDisplay,
    Volume,
    orient_for_display,
    orientation_code,
    reading_step,
    slice_display,
    slice_pixel_spacing,
)

AXES = ("axial", "coronal", "sagittal")
# Storage orders as ITK names them (where each index axis x, y, z increases towards): DICOM's,
# NIfTI's usual RAS, slices stored head first, sagittal and coronal acquisitions.
STORAGES = ("LPS", "RAS", "LPI", "PIR", "ASL", "LIP", "SRA")
SHAPE = (4, 5, 6)  # (Z, Y, X) of the LPS original: every axis its own length, so transposes show


def marked_scan() -> Volume:
    """An LPS scan with a mark in two opposite corners: 200 where the patient is rightmost,
    anterior and superior (the screen's top left in every view), 100 where leftmost, posterior and
    inferior (the bottom right)."""
    array = np.zeros(SHAPE, np.int16)
    array[-1, 0, 0] = 200  # superior (last z), anterior (first y), right (first x)
    array[0, -1, -1] = 100
    return Volume(array=array, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0))


def stored_as(volume: Volume, code: str, folder: Path) -> Volume:
    """`volume` written as a NIfTI whose axes run as `code` says, read back as users' files are."""
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    path = folder / f"{code}.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(image, code), str(path))
    stored = load_image(path)
    assert orientation_code(stored) == code
    return stored


def shown_slices(volume: Volume, axis: str) -> np.ndarray:
    """Every `axis` slice as shown, in the order a viewer steps through them (`reading_step`: head
    to feet, front to back, the patient's right to left); slice numbers themselves follow the file."""
    axis_index = slicing_axis_index(volume, axis)
    display = slice_display(volume, axis)
    shown = np.stack([orient_for_display(s, display) for s in to_slices(volume.array, axis_index)])
    return shown[:: reading_step(volume, axis)]


@pytest.mark.parametrize("code", STORAGES)
def test_every_storage_order_shows_the_patient_the_same_way(code: str, tmp_path: Path) -> None:
    original = marked_scan()
    stored = stored_as(original, code, tmp_path)
    for axis in AXES:
        shown = shown_slices(stored, axis)
        assert np.array_equal(shown, shown_slices(original, axis)), (code, axis)
        top_left, bottom_right = np.argwhere(shown == 200)[0], np.argwhere(shown == 100)[0]
        assert tuple(top_left[1:]) == (0, 0), (code, axis)
        assert tuple(bottom_right[1:]) == tuple(np.array(shown.shape[1:]) - 1), (code, axis)
        assert top_left[0] == 0 and bottom_right[0] == shown.shape[0] - 1  # the superior, anterior, right slice first


def test_dicom_order_is_shown_as_stored_and_a_ras_nifti_turned() -> None:
    lps = marked_scan()
    assert {axis: slice_display(lps, axis) for axis in AXES} == {
        "axial": SliceDisplay(),
        "coronal": SliceDisplay(flip_rows=True),  # rows run up the patient as stored: head up needs a flip
        "sagittal": SliceDisplay(flip_rows=True),
    }
    ras = lps.with_array(lps.array[:, ::-1, ::-1])
    ras = Volume(array=ras.array, direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    assert slice_display(ras, "axial") == SliceDisplay(flip_rows=True, flip_columns=True)
    # Both store axial slices from the feet up (z to S): a viewer steps down through the numbers.
    assert [reading_step(lps, axis) for axis in AXES] == [-1, 1, 1]
    assert [reading_step(ras, axis) for axis in AXES] == [-1, -1, -1]


def test_a_real_ras_scan_looks_the_same_stored_as_dicom_orders(tmp_path: Path) -> None:
    """The MNI152 template (a RAS NIfTI, 189 x 233 x 197) resaved as DICOM's LPS and as a sagittal
    acquisition shows the same pixels in every view."""
    brain, _ = mni152_brain()
    assert orientation_code(brain) == "RAS"
    for code in ("LPS", "PIR"):
        stored = stored_as(brain, code, tmp_path)
        for axis in AXES:
            assert np.array_equal(shown_slices(stored, axis), shown_slices(brain, axis)), (code, axis)


def test_the_overlay_montage_turns_its_tiles(tmp_path: Path) -> None:
    """Coronal tiles of a RAS scan with a labelled block where the patient is superior, anterior and
    rightmost: in each tile the label's outline sits in the top left corner."""
    array = np.zeros((40, 50, 60), np.int16)
    array[30:, :10, :12] = 200
    stored = stored_as(Volume(array=array), "RAS", tmp_path)
    slices = to_slices(stored.array, slicing_axis_index(stored, "coronal"))
    labels = (slices == 200).astype(np.uint8)
    path = save_overlay_montage((labels * 120).astype(np.uint8), labels, tmp_path / "montage.png", display=slice_display(stored, "coronal"))
    montage = np.asarray(Image.open(path).convert("RGB"))
    first_tile = montage[:160, :240]  # (Z, X) of a coronal slice, 40 x 60 enlarged 4 times to fill its 256-pixel cell
    outline = np.argwhere((first_tile == LABEL_COLOURS[0]).all(axis=-1))
    assert len(outline) > 80
    assert outline[:, 0].max() < 4 * 10 and outline[:, 1].max() < 4 * 12


def test_montage_tiles_are_in_square_millimetres(tmp_path: Path) -> None:
    """A coronal slice of 5 mm sections is shown five times taller than its 8 rows of pixels (and
    then, 40 x 30, enlarged 6 times to fill its 256-pixel cell)."""
    scan = Volume(array=np.full((8, 20, 30), 100, np.uint8), spacing=(1.0, 1.0, 5.0))
    axis_index = slicing_axis_index(scan, "coronal")
    slices = to_slices(scan.array, axis_index)
    labels = np.zeros(slices.shape, np.uint8)
    labels[10, 2:6, 5:25] = 1
    path = save_overlay_montage(
        slices, labels, tmp_path / "montage.png", display=slice_display(scan, "coronal"), pixel_spacing=slice_pixel_spacing(scan, axis_index)
    )
    assert slice_pixel_spacing(scan, axis_index) == (1.0, 5.0)
    grey = np.argwhere((np.asarray(Image.open(path).convert("RGB")) == 100).all(axis=-1))
    assert grey[:, 0].max() + 1 == 6 * 40 and grey[:, 1].max() + 1 == 6 * 30  # 8 rows x 5 mm, 30 columns x 1 mm


def test_slices_too_narrow_for_the_model_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Coronal slices of 13 sections of 5 mm are 13 rows high: resized for the model, a few rows."""
    scan = Volume(array=np.arange(13 * 64 * 80).reshape(13, 64, 80).astype(np.int16), spacing=(0.8, 0.8, 5.0))
    with caplog.at_level("WARNING", logger="medsam2.engine.api"):
        assert prepare_slices(scan, "axial")[0].shape == (13, 64, 80)
        assert not caplog.records
        assert prepare_slices(scan, "coronal")[0].shape == (64, 13, 80)
    assert "coronal slices are 80×13 pixels (wide×high): too narrow for the model" in caplog.text


def test_a_blank_image_or_a_window_outside_it_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """The model would still draw a mask (from the box alone), which means nothing."""
    ramp = Volume(array=np.tile(np.arange(-100, 100, dtype=np.int16), (4, 32, 1)), modality="CT", source="ramp.nii.gz")
    with caplog.at_level("WARNING", logger="medsam2.engine.api"):
        prepare_slices(ramp, "axial")
        assert not caplog.records
        prepare_slices(ramp, "axial", window="10,3000")  # every value far below the window: all black
        prepare_slices(ramp.with_array(np.zeros_like(ramp.array)), "axial")
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["ramp.nii.gz", "ramp.nii.gz"]
    assert "the model sees one grey level everywhere" in caplog.text


def rotation(degrees_about_x: float, degrees_about_y: float, degrees_about_z: float) -> np.ndarray:
    """The rotation about x, then y, then z (fixed axes, right-handed), as a 3x3 direction matrix."""
    turns = []
    for axis, degrees in enumerate((degrees_about_x, degrees_about_y, degrees_about_z)):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = (axis + 1) % 3, (axis + 2) % 3  # right-handed: x turns y to z, y turns z to x
        turn = np.eye(3)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        turns.append(turn)
    return turns[2] @ turns[1] @ turns[0]


def test_a_strongly_oblique_scan_still_has_three_distinct_slicing_axes(tmp_path: Path) -> None:
    """Tilted 50, 30 and 20 degrees, the scan's y and z axes are both nearest world y (anterior to
    posterior): taken one by one, they would both be coronal and none axial. Each index axis gets a
    world axis of its own, so the three views step through three different array axes, and a file
    of it reads back with the same answers."""
    direction = rotation(50, 30, 20)
    nearest = np.argmax(np.abs(direction), axis=0)
    assert nearest.tolist() == [0, 1, 1]  # the trap: index axes y and z nearest the same world axis
    oblique = Volume(array=marked_scan().array, spacing=(0.8, 0.9, 2.5), direction=tuple(direction.ravel()))
    assert orientation_code(oblique) == "LPS"
    assert sorted(slicing_axis_index(oblique, axis) for axis in AXES) == [0, 1, 2]
    assert slicing_axis_index(oblique, "axial") == 0 and slicing_axis_index(oblique, "coronal") == 1

    image = sitk.GetImageFromArray(oblique.array)
    image.SetSpacing(oblique.spacing)
    image.SetDirection(oblique.direction)
    sitk.WriteImage(image, str(tmp_path / "oblique.nii.gz"))
    read = load_image(tmp_path / "oblique.nii.gz")
    assert [slicing_axis_index(read, axis) for axis in AXES] == [0, 1, 2]
    assert [reading_step(read, axis) for axis in AXES] == [reading_step(oblique, axis) for axis in AXES]
    # Tilted 20 degrees the other way round, the same scan is still a coronal acquisition's order.
    coronal = Volume(array=oblique.array, direction=tuple((rotation(0, 0, 20) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])).ravel()))
    assert orientation_code(coronal) == "LIP" and slicing_axis_index(coronal, "coronal") == 0


def test_the_montage_always_shows_the_prompted_slices() -> None:
    """40 slices with a mask, 16 tiles: evenly picked they would skip slice 7, where the box was
    drawn; the boxed slices are kept and the rest spread over what is left."""
    labels = np.zeros((50, 4, 4), np.uint8)
    labels[5:45, 1, 1] = 1
    assert montage_slices(labels, [], 16)[:4] == [5, 8, 10, 13]  # 7 is not among 16 evenly picked
    shown = montage_slices(labels, [7, 30], 16)
    assert len(shown) == 16 and {7, 30} <= set(shown) and shown[0] == 5 and shown[-1] == 44
    assert montage_slices(labels, list(range(0, 50, 2)), 4) == [0, 16, 32, 48]  # more boxes than tiles: boxes only
    assert montage_slices(np.zeros((9, 4, 4), np.uint8), [], 16) == [4]


def test_a_mask_loaded_like_its_image_comes_on_the_images_grid(tmp_path: Path) -> None:
    """`load_mask(path, like=image)`: a mask stored in another axis order (RAS for an LPS scan) comes
    rearranged voxel for voxel onto the image's grid (it came in its file's order, and a Dice
    against a prediction was silently wrong); a mask of another grid is a one-line error."""
    from medsam2.errors import InputError
    from medsam2.io import load_mask

    rng = np.random.default_rng(4)
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:4, 2:7, 3:5], labels[4, 6:9, 8:11] = 1, 2
    image = Volume(array=rng.integers(0, 100, labels.shape).astype(np.int16), spacing=(0.7, 0.8, 2.5), origin=(5.0, -3.0, 12.0))
    lps_image = stored_as(image, "LPS", tmp_path)
    (tmp_path / "image").mkdir()
    ras_mask = stored_as(image.with_array(labels), "RAS", tmp_path / "image")
    assert not np.array_equal(ras_mask.array, labels)  # the file holds the voxels in another order
    loaded = load_mask(tmp_path / "image" / "RAS.nii.gz", like=lps_image)
    np.testing.assert_array_equal(loaded.array, labels)
    assert loaded.direction == pytest.approx(lps_image.direction) and loaded.origin == pytest.approx(lps_image.origin)
    other = sitk.GetImageFromArray(labels)
    other.SetSpacing((0.7, 0.8, 5.0))
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    with pytest.raises(InputError, match=r"other.nii.gz vs .*: spacing differs"):
        load_mask(tmp_path / "other.nii.gz", like=lps_image)
