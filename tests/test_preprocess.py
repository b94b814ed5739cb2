"""Intensity mapping to uint8 and the resize transforms to and from model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam2.errors import InputError
from medsam2.io import Volume, load_image
from medsam2.io.samples import mni152_brain
from medsam2.metrics import dice
from medsam2.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WINDOW_PRESETS,
    LongestSideResize,
    SliceResize,
    SquareResize,
    Window,
    apply_window,
    guess_modality,
    parse_window,
    to_uint8,
)
from medsam2.transfer import HostCopy, to_device

TRANSFORMS = [LongestSideResize(), SquareResize()]
SHAPES = [(512, 512), (300, 512)]


def largest_lesion_slice(case: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (image, mask) slice of a CT lesion case where the lesion is largest."""
    data = np.load(case)
    z = int(np.argmax((data["gts"] > 0).sum(axis=(1, 2))))
    return data["imgs"][z], data["gts"][z] > 0


def crop_rows(array: np.ndarray, mask: np.ndarray, rows: int) -> np.ndarray:
    """`rows` rows of `array` centred on `mask`, to make a non-square slice that still shows the lesion."""
    present = np.flatnonzero(mask.any(axis=1))
    start = int(np.clip((present[0] + present[-1]) // 2 - rows // 2, 0, array.shape[0] - rows))
    return array[start : start + rows]


# --- intensity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
def test_window_preset_maps_level_to_middle_and_ends_to_0_and_255(name: str) -> None:
    width, level = WINDOW_PRESETS[name]
    hu = np.array([level - width, level - width / 2, level, level + width / 2, level + width])
    out = apply_window(hu, width, level)
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[1] == 0
    assert out[2] in (127, 128)
    assert out[3] == 255 and out[4] == 255


def test_named_presets_have_the_standard_values() -> None:
    assert WINDOW_PRESETS["soft_tissue"] == WINDOW_PRESETS["abdomen"] == (400, 40)
    assert WINDOW_PRESETS["lung"] == (1500, -600)
    assert WINDOW_PRESETS["bone"] == (1800, 400)
    assert WINDOW_PRESETS["brain"] == (80, 40)
    assert WINDOW_PRESETS["liver"] == (150, 30)
    assert WINDOW_PRESETS["mediastinum"] == (350, 50)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("lung", Window(1500, -600)),
        (" Soft-Tissue ", Window(400, 40)),
        ("400,40", Window(400, 40)),
        ("W1500, L-600", Window(1500, -600)),
        ("350.5,-20.25", Window(350.5, -20.25)),
    ],
)
def test_parse_window_reads_presets_and_width_level(spec: str, expected: Window) -> None:
    assert parse_window(spec) == expected


@pytest.mark.parametrize("spec", ["", "lungs", "400", "400;40", "0,40", "-400,40", "w,l", "400,40,1"])
def test_parse_window_rejects_junk_with_one_line(spec: str) -> None:
    with pytest.raises(InputError) as error:
        parse_window(spec)
    assert "\n" not in str(error.value)
    assert "window" in str(error.value)


def test_ct_in_hu_gets_the_soft_tissue_window_and_round_trips_windowed_data(ct_lesion_cases: list[Path]) -> None:
    windowed = np.load(ct_lesion_cases[0])["imgs"]
    # Undo the soft-tissue window the npz was made with, and put air where it clipped to black.
    hu = (windowed.astype(np.float32) * (400 / 255) - 160).round().astype(np.int16)
    hu[windowed == 0] = -1000
    volume = Volume(hu, spacing=(0.7, 0.7, 5.0))

    assert guess_modality(volume) == "CT"
    result = to_uint8(volume)
    assert result.mapping.kind == "window"
    assert (result.mapping.low, result.mapping.high) == (-160, 240)
    assert result.array.dtype == np.uint8 and result.array.shape == windowed.shape
    assert np.abs(result.array.astype(int) - windowed.astype(int)).max() <= 1

    lung = to_uint8(volume, window="lung")
    assert (lung.mapping.low, lung.mapping.high) == (-1350, 150)
    assert not np.array_equal(lung.array, result.array)


def test_uint8_data_passes_through_unchanged(ct_lesion_cases: list[Path]) -> None:
    imgs = np.load(ct_lesion_cases[1])["imgs"]
    result = to_uint8(Volume(imgs, modality="CT"))
    assert result.mapping.kind == "passthrough"
    assert result.array is imgs

    as_int16 = to_uint8(Volume(imgs.astype(np.int16)))
    assert as_int16.mapping.kind == "passthrough"
    assert as_int16.array.dtype == np.uint8 and np.array_equal(as_int16.array, imgs)

    as_float = to_uint8(Volume(imgs.astype(np.float32)))
    assert as_float.mapping.kind == "passthrough" and np.array_equal(as_float.array, imgs)


def test_mr_like_volume_is_clipped_to_foreground_percentiles() -> None:
    t1, brain = mni152_brain()
    rng = np.random.default_rng(0)
    # A 12-bit scanner-like T1: template scaled up, noise in the head, a zero background, and a
    # few very bright voxels (vessels, artefacts) that a min-max rescale would let dominate.
    head = t1.array > 0
    mr = np.where(head, t1.array.astype(np.float64) * 12 + 40 + rng.normal(0, 5, t1.array.shape), 0.0)
    bright = head & (rng.random(t1.array.shape) < 0.002)
    mr[bright] = 30000
    mr = np.clip(mr, 0, None).astype(np.int16)
    volume = Volume(mr, spacing=t1.spacing, modality="MR")

    result = to_uint8(volume)
    foreground = mr[mr > 0]
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert result.mapping.kind == "percentile"
    assert result.mapping.low == pytest.approx(low) and result.mapping.high == pytest.approx(high)
    assert high < 30000  # the outliers did not set the scale
    out = result.array
    assert out.dtype == np.uint8
    assert np.all(out[mr == 0] == 0)
    assert np.all(out[bright] == 255)
    saturated = np.count_nonzero(out[mr > 0] == 255) / foreground.size
    assert 0.004 < saturated < 0.01
    # Brain tissue keeps its contrast: it spreads over most of the range.
    tissue = out[brain.array > 0]
    assert np.percentile(tissue, 95) - np.percentile(tissue, 5) > 80
    # Monotonic: the mapping never swaps the order of two intensities.
    order = np.argsort(mr, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_modality_tag_override_and_guess() -> None:
    hu = np.full((2, 8, 8), 40, dtype=np.int16)
    hu[:, :2] = -1000
    assert guess_modality(Volume(hu)) == "CT"
    assert guess_modality(Volume(hu, modality="MR")) == "MR"  # the file's tag wins
    assert guess_modality(Volume(hu + 2000)) == "unknown"

    assert to_uint8(Volume(hu)).mapping.kind == "window"
    assert to_uint8(Volume(hu), modality="mri").mapping.kind == "percentile"
    tagged_ct = to_uint8(Volume(hu + 1000, modality="CT"))  # a brain crop: no air, but tagged CT
    assert tagged_ct.mapping.kind == "window" and tagged_ct.mapping.modality == "CT"
    assert to_uint8(Volume(hu + 2000), modality="PET").mapping.modality == "PT"
    with pytest.raises(InputError, match="modality"):
        to_uint8(Volume(hu), modality="xray")


def test_explicit_window_applies_even_to_8bit_data_with_a_warning(ct_lesion_cases: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """A MedSAM npz is windowed already: a window read as HU changed its Dice 0.837 -> 0.720 silently."""
    imgs = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    with caplog.at_level("WARNING", logger="medsam2.preprocess.intensity"):
        result = to_uint8(Volume(imgs), window="100,100")
        assert result.mapping.kind == "window"
        assert result.array.ravel()[50] == 0 and result.array.ravel()[150] == 255
        to_uint8(Volume(np.load(ct_lesion_cases[1])["imgs"].astype(np.int16) * 4 - 1000, modality="CT"), window="soft-tissue")
        assert len(caplog.records) == 1  # HU data: the window is what it is for
        to_uint8(load_image(ct_lesion_cases[1]), window="soft-tissue")
    assert [record.getMessage() for record in caplog.records][1] == (
        f"{ct_lesion_cases[1]}: the intensities are 0-255 already (windowed, as in MedSAM .npz files, pictures and video "
        "frames); the window W400,L40 reads them as HU and changes the contrast the model sees: leave it out"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_an_input_error(bad: float) -> None:
    array = np.zeros((2, 4, 4), dtype=np.float32)
    array[1, 2, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        to_uint8(Volume(array, source=Path("scan.nii.gz")))


# --- resize: images ----------------------------------------------------------------------------


def test_longest_side_on_512_is_lite_medsam_input(ct_lesion_cases: list[Path]) -> None:
    image, _ = largest_lesion_slice(ct_lesion_cases[0])
    out = LongestSideResize().prepare(image)
    assert out.shape == (3, 256, 256) and out.dtype == torch.float32
    # At an integer factor area averaging is block averaging; OpenCV rounds it to uint8 half up.
    blocks = F.avg_pool2d(torch.from_numpy(image).double()[None, None], 2)[0, 0]
    blocks = torch.floor(blocks + 0.5)
    expected = (blocks - blocks.min()) / (blocks.max() - blocks.min())
    assert torch.allclose(out[0].double(), expected, atol=1e-6)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_longest_side_pads_a_non_square_slice_bottom_right(ct_lesion_cases: list[Path]) -> None:
    image, mask = largest_lesion_slice(ct_lesion_cases[0])
    wide = crop_rows(image, mask, 300)
    transform = LongestSideResize()
    assert transform.content_hw(wide.shape) == (150, 256)
    out = transform.prepare(wide)
    assert out.shape == (3, 256, 256)
    assert out[:, :150].min() == 0 and out[:, :150].max() == 1
    assert torch.count_nonzero(out[:, 150:]) == 0


def test_area_resize_weights_pixels_by_overlap_at_fractional_factors() -> None:
    # 6 -> 4 pixels: each output pixel covers 1.5 input pixels, e.g. out[0] = (in[0] + in[1] / 2) / 1.5.
    rows = np.array([0, 30, 60, 90, 120, 150], dtype=np.uint8)
    image = np.repeat(rows[:, None], 6, axis=1)
    out = LongestSideResize(target=4).prepare(image)[0, :, 0]
    area = np.array([10, 50, 100, 140], dtype=float)
    assert np.allclose(out.numpy(), (area - 10) / 130, atol=1e-6)


def test_square_resize_is_sam2_input(ct_lesion_cases: list[Path]) -> None:
    image, mask = largest_lesion_slice(ct_lesion_cases[0])
    transform = SquareResize()
    out = transform.prepare(image)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (torch.from_numpy(image).float()[None] / 255 - mean) / std
    assert out.shape == (3, 512, 512)
    assert torch.allclose(out, expected, atol=1e-6)

    wide = transform.prepare(crop_rows(image, mask, 300))
    assert wide.shape == (3, 512, 512)
    constant = transform.prepare(np.full((300, 512), 128, dtype=np.uint8))
    assert torch.allclose(constant, ((128 / 255 - mean) / std).expand(3, 512, 512), atol=1e-6)


def test_every_grey_level_is_scaled_as_sam2_loads_frames(device: str) -> None:
    """SAM 2 divides uint8 frames by 255 in float64 on the host; ours scales them on the device. All
    256 levels must come out identical (on CUDA, a multiplication by 1/255 differs for 126 levels)."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    ours = SquareResize(target=16).prepare_batch(levels, device)
    reference = torch.from_numpy(levels / 255.0).float().to(device)[..., None]
    mean, std = (torch.tensor(values, device=device) for values in (IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(ours, ((reference - mean) / std).permute(0, 3, 1, 2))


def test_copies_to_and_from_the_device_keep_every_value(device: str) -> None:
    """Frames and memory selections go to the device, masks come back, through pinned memory on a
    GPU and without waiting there: each value arrives as it left, once `result` has waited."""
    values = torch.arange(-1000, 1000, dtype=torch.float32).reshape(40, 50) / 7
    on_device = to_device(values, device)
    assert on_device.device.type == device
    back = HostCopy(on_device * 2)
    assert torch.equal(back.result(), values * 2)


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_batch_matches_single_slices_and_accepts_rgb(transform: SliceResize, ct_lesion_cases: list[Path]) -> None:
    stack = np.load(ct_lesion_cases[2])["imgs"][4:7]
    batch = transform.prepare_batch(stack)
    assert batch.shape == (3, 3, transform.target, transform.target)
    for index, image in enumerate(stack):
        assert torch.equal(batch[index], transform.prepare(image))
    rgb = np.repeat(stack[..., None], 3, axis=-1)
    assert torch.allclose(transform.prepare_batch(rgb), batch, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        transform.prepare_batch(stack.astype(np.float32))


# --- resize: coordinates, masks and logits ------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_box_and_points_map_onto_the_resized_image(transform: SliceResize, shape: tuple[int, int]) -> None:
    x0, y0, x1, y1 = 101, 67, 231, 190  # inclusive pixel bounds of a bright rectangle
    image = np.zeros(shape, dtype=np.uint8)
    image[y0 : y1 + 1, x0 : x1 + 1] = 255
    box = np.array([x0, y0, x1, y1], dtype=float)
    points = np.array([[x0, y0], [x1, y1], [150.5, 100.25]])

    model_box = transform.box_to_model(box, shape)
    model_image = transform.prepare(image)[0]
    rows, cols = np.nonzero((model_image > (model_image.min() + model_image.max()) / 2).numpy())
    seen = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)
    assert np.abs(seen - model_box).max() <= 1.0

    model_points = transform.points_to_model(points, shape)
    assert np.allclose(model_points[:2], model_box.reshape(2, 2))
    # leading dimensions are kept
    assert transform.box_to_model(np.stack([box, box]), shape).shape == (2, 4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_mask_to_model_and_logits_back_recover_a_real_lesion(
    transform: SliceResize, shape: tuple[int, int], ct_lesion_cases: list[Path]
) -> None:
    _, full_mask = largest_lesion_slice(ct_lesion_cases[0])
    mask = crop_rows(full_mask, full_mask, shape[0])
    model_mask = transform.mask_to_model(mask)
    assert model_mask.shape == (transform.target, transform.target)
    assert set(torch.unique(model_mask).tolist()) == {0.0, 1.0}

    rows, cols = np.nonzero(mask)
    model_rows, model_cols = np.nonzero(model_mask.numpy())
    box = transform.box_to_model(np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]), shape)
    seen = np.array([model_cols.min(), model_rows.min(), model_cols.max() + 1, model_rows.max() + 1])
    assert np.abs(seen - box).max() <= 1.0

    logits = model_mask * 20 - 10  # as a model's logits: positive inside
    back = transform.logits_to_image(logits, shape)
    assert back.shape == shape
    assert dice((back > 0).numpy(), mask) > 0.98


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_low_resolution_grid_round_trip(transform: SliceResize, shape: tuple[int, int]) -> None:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    disc = (rows - 140) ** 2 + (cols - 300) ** 2 < 90**2
    grid = transform.target // 4
    low = transform.mask_to_model(disc, size=grid)
    assert low.shape == (grid, grid)
    back = transform.logits_to_image((low * 20 - 10)[None, None], shape)
    assert back.shape == (1, 1, *shape)
    assert dice((back[0, 0] > 0).numpy(), disc) > 0.95
    if isinstance(transform, LongestSideResize) and shape[0] < shape[1]:
        content_rows = round(transform.content_hw(shape)[0] * grid / transform.target)
        assert torch.count_nonzero(low[content_rows:]) == 0


def test_logits_keep_leading_dimensions() -> None:
    logits = torch.randn(2, 3, 256, 256)
    back = LongestSideResize().logits_to_image(logits, (300, 512))
    assert back.shape == (2, 3, 300, 512)
    # Bilinear resizing of the cropped 150 x 256 content: every value stays within the content's range.
    content = logits[..., :150, :256]
    assert back.min() >= content.min() - 1e-5 and back.max() <= content.max() + 1e-5
