"""DSC, NSD and HD95: hand-computable cases, the empty cases, axis order of spacing, agreement with
independent implementations on real CT lesion masks, and `medsam2 eval`'s cases, labels and outputs."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.errors import InputError
from medsam2.metrics import LabelScores, dice, evaluate, hd95, nsd

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import surface_distance  # DeepMind's reference NSD

SPACING_XYZ = (0.7, 1.3, 5.0)


def axis_spacing(ndim: int) -> tuple[float, ...]:
    """SPACING_XYZ per array axis: (sz, sy, sx), or (sy, sx) in 2D."""
    return tuple(reversed(SPACING_XYZ[:ndim]))


def thin_wall(shape: tuple[int, ...], axis: int, at: int) -> np.ndarray:
    """A one-voxel-thick wall across `axis` at index `at`, spanning indices 2..6 of the other axes."""
    index = [slice(2, 7)] * len(shape)
    index[axis] = slice(at, at + 1)
    wall = np.zeros(shape, dtype=bool)
    wall[tuple(index)] = True
    return wall


def reference_hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
    """HD95 from scipy distance transforms: boundary voxels are voxels with a background face-neighbour."""

    def boundary(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, border_value=0)

    pred_edge, gt_edge = boundary(pred), boundary(gt)
    pred_to_gt = ndimage.distance_transform_edt(~gt_edge, sampling=spacing)[pred_edge]
    gt_to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[gt_edge]
    return max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))


def reference_nsd(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it imports scipy.ndimage.filters
        distances = surface_distance.compute_surface_distances(gt, pred, spacing)
    return surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm)


def crop_around(*masks: np.ndarray, margin: int = 3) -> tuple[np.ndarray, ...]:
    """The masks cut to their union's bounding box plus `margin` (background) voxels, for speed."""
    union = np.logical_or.reduce(masks)
    box = tuple(
        slice(max(int(idx.min()) - margin, 0), int(idx.max()) + margin + 1) for idx in np.nonzero(union)
    )
    return tuple(mask[box] for mask in masks)


# --- hand-computable cases -----------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_dice_of_boxes_with_known_overlap(ndim: int) -> None:
    shape = (20,) * ndim
    gt = np.zeros(shape, dtype=bool)
    gt[(slice(5, 15),) * ndim] = True
    pred = np.roll(gt, 3, axis=-1)  # 7 of 10 columns overlap
    assert dice(pred, gt) == pytest.approx(0.7, abs=1e-12)
    assert dice(gt, gt) == 1.0
    assert dice(pred.astype(np.uint8) * 4, gt) == pytest.approx(0.7, abs=1e-12)  # any non-zero is foreground


@pytest.mark.parametrize(("ndim", "axis"), [(3, 0), (3, 1), (3, 2), (2, 0), (2, 1)])
def test_shift_along_each_axis_is_measured_with_that_axis_spacing(ndim: int, axis: int) -> None:
    # A wall one voxel thick moved by one voxel across itself: every boundary voxel is exactly
    # one spacing step from the other wall. The surfaces facing each other coincide (distance 0)
    # and the outer ones are one step apart, each half of the surface area.
    shape = (10,) * ndim
    gt = thin_wall(shape, axis, 4)
    pred = thin_wall(shape, axis, 5)
    step = axis_spacing(ndim)[axis]
    assert hd95(pred, gt, SPACING_XYZ) == pytest.approx(step, rel=1e-6)
    assert nsd(pred, gt, SPACING_XYZ, tolerance_mm=0.9 * step) == pytest.approx(0.5, abs=1e-6)
    assert nsd(pred, gt, SPACING_XYZ, tolerance_mm=1.001 * step) == pytest.approx(1.0, abs=1e-6)
    assert dice(pred, gt) == 0.0


def test_z_shift_counts_slice_thickness_not_pixel_size() -> None:
    gt = thin_wall((10, 10, 10), axis=0, at=4)
    pred = thin_wall((10, 10, 10), axis=0, at=5)
    assert hd95(pred, gt, (1.0, 1.0, 5.0)) == pytest.approx(5.0)
    assert hd95(pred, gt, (5.0, 5.0, 1.0)) == pytest.approx(1.0)


def test_gap_of_several_slices_gives_exact_nsd_steps() -> None:
    # Walls 3 slices apart (sz = 5 mm): the near surfaces are 10 mm apart, the far ones 15 mm.
    gt = thin_wall((10, 10, 10), axis=0, at=2)
    pred = thin_wall((10, 10, 10), axis=0, at=5)
    assert hd95(pred, gt, SPACING_XYZ) == pytest.approx(15.0)
    assert nsd(pred, gt, SPACING_XYZ, 9.9) == 0.0
    assert nsd(pred, gt, SPACING_XYZ, 10.1) == pytest.approx(0.5, abs=1e-6)
    assert nsd(pred, gt, SPACING_XYZ, 14.9) == pytest.approx(0.5, abs=1e-6)
    assert nsd(pred, gt, SPACING_XYZ, 15.1) == pytest.approx(1.0, abs=1e-6)


def test_square_shifted_by_rows_with_anisotropic_spacing() -> None:
    # A 10 x 10 square moved down 2 rows (sy = 3 mm, sx = 0.5 mm). Its bottom row, a quarter of
    # its boundary voxels, is 2 * 3 = 6 mm from the other square's boundary and no voxel is
    # farther, so the 95th percentile is 6 mm in both directions.
    gt = np.zeros((30, 30), dtype=bool)
    gt[5:15, 5:15] = True
    pred = np.roll(gt, 2, axis=0)
    spacing = (0.5, 3.0)
    assert hd95(pred, gt, spacing) == pytest.approx(6.0)
    assert nsd(pred, gt, spacing, 6.01) == pytest.approx(1.0)
    assert 0.0 < nsd(pred, gt, spacing, 5.9) < 1.0
    assert dice(pred, gt) == pytest.approx(0.8)
    # The same shift along columns is 2 * 0.5 = 1 mm.
    assert hd95(np.roll(gt, 2, axis=1), gt, spacing) == pytest.approx(1.0)


# --- empty cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_both_empty_is_a_perfect_score(ndim: int) -> None:
    empty = np.zeros((8,) * ndim, dtype=np.uint8)
    assert dice(empty, empty) == 1.0
    assert nsd(empty, empty, SPACING_XYZ) == 1.0
    assert hd95(empty, empty, SPACING_XYZ) == 0.0
    assert evaluate(empty, empty, SPACING_XYZ) == []


@pytest.mark.parametrize("ndim", [2, 3])
def test_one_empty_is_the_worst_score(ndim: int) -> None:
    empty = np.zeros((8,) * ndim, dtype=np.uint8)
    blob = empty.copy()
    blob[(slice(2, 5),) * ndim] = 1
    for pred, gt in ((empty, blob), (blob, empty)):
        assert dice(pred, gt) == 0.0
        assert nsd(pred, gt, SPACING_XYZ) == 0.0
        assert hd95(pred, gt, SPACING_XYZ) == math.inf
    missed = evaluate(empty, blob, SPACING_XYZ)
    assert missed == [LabelScores(label=1, dice=0.0, nsd=0.0, hd95=math.inf, pred_voxels=0, gt_voxels=3**ndim)]


# --- label maps and errors -----------------------------------------------------------------------


def test_evaluate_scores_every_label_in_either_map() -> None:
    gt = np.zeros((6, 20, 20), dtype=np.uint16)
    gt[1:4, 2:8, 2:8] = 1
    gt[2:5, 10:18, 10:18] = 3
    pred = np.zeros_like(gt)
    pred[1:4, 3:9, 2:8] = 1
    pred[0:2, 12:15, 0:4] = 7  # a false positive label
    scores = evaluate(pred, gt, SPACING_XYZ, tolerance_mm=1.0)
    assert [s.label for s in scores] == [1, 3, 7]
    by_label = {s.label: s for s in scores}
    assert by_label[1].dice == dice(pred == 1, gt == 1)
    assert by_label[1].nsd == nsd(pred == 1, gt == 1, SPACING_XYZ, 1.0)
    assert by_label[1].hd95 == hd95(pred == 1, gt == 1, SPACING_XYZ)
    assert (by_label[1].pred_voxels, by_label[1].gt_voxels) == (108, 108)
    assert (by_label[3].dice, by_label[3].hd95, by_label[3].pred_voxels) == (0.0, math.inf, 0)
    assert (by_label[7].dice, by_label[7].gt_voxels, by_label[7].pred_voxels) == (0.0, 0, 24)


def test_2d_masks_take_xy_spacing_with_or_without_z() -> None:
    gt = np.zeros((20, 20), dtype=bool)
    gt[4:12, 5:15] = True
    pred = np.roll(gt, (1, 2), axis=(0, 1))
    assert nsd(pred, gt, SPACING_XYZ, 1.0) == nsd(pred, gt, SPACING_XYZ[:2], 1.0)
    assert hd95(pred, gt, SPACING_XYZ) == hd95(pred, gt, SPACING_XYZ[:2])


def test_bad_inputs_are_one_line_input_errors() -> None:
    mask = np.ones((4, 5, 6), dtype=bool)
    cases = [
        lambda: dice(mask, mask[:3]),
        lambda: evaluate(mask.astype(np.uint8), mask[:, :4].astype(np.uint8), SPACING_XYZ),
        lambda: hd95(mask, mask, (1.0, 1.0)),
        lambda: hd95(mask, mask, (1.0, 0.0, 1.0)),
        lambda: nsd(mask, mask, SPACING_XYZ, tolerance_mm=-1.0),
        lambda: dice(mask[None], mask[None]),
    ]
    for call in cases:
        with pytest.raises(InputError) as error:
            call()
        assert "\n" not in str(error.value)


# --- agreement with independent implementations on real lesions ---------------------------------


def altered_copies(gt: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "eroded": ndimage.binary_erosion(gt, iterations=2),
        "dilated": ndimage.binary_dilation(gt, iterations=2),
        "shifted": np.roll(gt, (1, 3, -2), axis=(0, 1, 2)),
    }


def test_real_lesions_agree_with_scipy_and_deepmind(ct_lesion_cases: list[Path]) -> None:
    for case in ct_lesion_cases:
        data = np.load(case)
        gt = data["gts"] > 0
        spacing_xyz = tuple(float(s) for s in data["spacing"])
        spacing_zyx = spacing_xyz[::-1]
        for name, pred in altered_copies(gt).items():
            small_pred, small_gt = crop_around(pred, gt)
            expected_hd95 = reference_hd95(small_pred, small_gt, spacing_zyx)
            expected_nsd = reference_nsd(small_pred, small_gt, spacing_zyx, 2.0)
            [scores] = evaluate(pred.astype(np.uint8), gt.astype(np.uint8), spacing_xyz, tolerance_mm=2.0)
            assert scores.hd95 == pytest.approx(expected_hd95, rel=1e-5), (case.name, name)
            assert scores.nsd == pytest.approx(expected_nsd, abs=1e-5), (case.name, name)
            assert scores.dice == pytest.approx(
                2 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))
            )
            assert 0.0 < scores.nsd < 1.0 and scores.hd95 > 0


def test_real_lesion_slice_and_a_mask_touching_the_border_agree(ct_lesion_cases: list[Path]) -> None:
    data = np.load(ct_lesion_cases[1])
    spacing_xyz = tuple(float(s) for s in data["spacing"])
    gt_slice = data["gts"][int(np.argmax(data["gts"].sum(axis=(1, 2))))] > 0
    pred_slice = ndimage.binary_dilation(gt_slice, iterations=3)
    assert hd95(pred_slice, gt_slice, spacing_xyz) == pytest.approx(
        reference_hd95(pred_slice, gt_slice, spacing_xyz[1::-1]), rel=1e-5
    )
    assert nsd(pred_slice, gt_slice, spacing_xyz, 1.5) == pytest.approx(
        reference_nsd(pred_slice, gt_slice, spacing_xyz[1::-1], 1.5), abs=1e-5
    )

    # Objects cut by the edge of the array: outside counts as background for both implementations.
    gt = np.zeros((5, 40, 40), dtype=bool)
    gt[0:3, 0:20, 10:40] = True
    pred = np.roll(gt, 2, axis=1)
    assert hd95(pred, gt, SPACING_XYZ) == pytest.approx(reference_hd95(pred, gt, axis_spacing(3)), rel=1e-5)
    assert nsd(pred, gt, SPACING_XYZ, 1.5) == pytest.approx(reference_nsd(pred, gt, axis_spacing(3), 1.5), abs=1e-5)


# --- medsam2 eval: every case scored, empty masks, strict JSON ------------------------------------

EVAL_SHAPE = (6, 12, 12)


def write_mask(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def cube(label: int = 1, columns: slice = slice(3, 8)) -> np.ndarray:
    """A 2 x 5 x 5 block of `label` (50 voxels)."""
    mask = np.zeros(EVAL_SHAPE, dtype=np.uint8)
    mask[2:4, 3:8, columns] = label
    return mask


def run_eval(*args: object):
    return CliRunner().invoke(app, ["eval", *(str(a) for a in args)])


def csv_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as file:
        return {(row["case"], row["label"]): row for row in csv.DictReader(file)}


def test_eval_folders_score_every_ground_truth_and_list_the_rest(tmp_path: Path) -> None:
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    write_mask(gts / "a.nii.gz", cube())
    write_mask(preds / "a.nii.gz", cube(columns=slice(4, 9)))  # one column over: 40 of 50 voxels shared
    write_mask(gts / "b.nii.gz", cube())  # no prediction
    write_mask(gts / "c.nii.gz", np.zeros(EVAL_SHAPE))  # nothing to find, nothing found
    write_mask(preds / "c.nii.gz", np.zeros(EVAL_SHAPE))
    write_mask(preds / "extra.nii.gz", cube())  # no ground truth
    result = run_eval(preds, gts, "--csv", tmp_path / "s.csv", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "1 case has no prediction, scored DSC 0, NSD 0, HD95 inf: b" in lines
    assert "1 prediction has no ground truth, ignored: extra" in lines
    assert "b (no prediction)" in result.stdout

    rows = csv_rows(tmp_path / "s.csv")
    assert sorted(rows) == [("a", "1"), ("b", "1"), ("c", "1")]
    a, b, c = rows["a", "1"], rows["b", "1"], rows["c", "1"]
    assert (float(a["dice"]), float(a["hd95"]), a["missing_prediction"]) == (pytest.approx(0.8), 1.0, "False")
    assert (float(b["dice"]), float(b["nsd"]), float(b["hd95"])) == (0.0, 0.0, math.inf)
    assert (b["pred_voxels"], b["gt_voxels"], b["missing_prediction"]) == ("0", "50", "True")
    assert (float(c["dice"]), float(c["nsd"]), float(c["hd95"]), c["missing_prediction"]) == (1.0, 1.0, 0.0, "False")

    report = json.loads((tmp_path / "s.json").read_text())
    assert (report["missing_predictions"], report["ignored_predictions"]) == (["b"], ["extra"])
    [summary] = report["summary"]
    assert summary["cases"] == 3 and summary["hd95_infinite"] == 1
    assert summary["dice_mean"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)

    (tmp_path / "other").mkdir()
    write_mask(tmp_path / "other" / "extra.nii.gz", cube())
    nothing_in_common = run_eval(tmp_path / "other", gts)
    assert nothing_in_common.exit_code == 2
    assert nothing_in_common.stderr.startswith("error: no file names in common")


def test_eval_scores_every_label_in_every_case(tmp_path: Path) -> None:
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    two_labels = cube(1, slice(0, 4)) + cube(2, slice(6, 10))
    for folder in (preds, gts):
        write_mask(folder / "a.nii.gz", two_labels)
        write_mask(folder / "b.nii.gz", cube(1))  # label 2 in neither mask: a perfect score
    write_mask(gts / "c.nii.gz", cube(1))  # no prediction: every label fails, label 2 too
    result = run_eval(preds, gts, "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    rows = csv_rows(tmp_path / "s.csv")
    assert sorted(rows) == [(case, label) for case in "abc" for label in "12"]
    assert [float(rows["b", "2"][m]) for m in ("dice", "nsd", "hd95")] == [1.0, 1.0, 0.0]
    assert [float(rows["c", "2"][m]) for m in ("dice", "nsd", "hd95")] == [0.0, 0.0, math.inf]
    assert (rows["c", "1"]["gt_voxels"], rows["c", "2"]["gt_voxels"]) == ("50", "0")


def test_eval_warns_when_prediction_and_truth_share_no_label(tmp_path: Path) -> None:
    """A 0/255 picture-style prediction against a 0/1 label map: scored by value as two labels,
    each a complete miss, and said so."""
    truth = write_mask(tmp_path / "gt.nii.gz", cube(1))
    white = write_mask(tmp_path / "pred.nii.gz", cube(255))
    result = run_eval(white, truth)
    assert result.exit_code == 0, result.output
    assert "warning: the predictions hold label(s) 255 and the ground truths 1, never the same" in result.stdout
    assert "warning" not in run_eval(truth, truth).stdout


def test_eval_of_two_empty_masks_is_a_perfect_score(tmp_path: Path) -> None:
    empty = write_mask(tmp_path / "empty.nii.gz", np.zeros(EVAL_SHAPE))
    result = run_eval(empty, empty, "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    [row] = json.loads((tmp_path / "s.json").read_text())["cases"]
    assert row == {
        "case": "empty",
        "label": 1,
        "dice": 1.0,
        "nsd": 1.0,
        "hd95": 0.0,
        "pred_voxels": 0,
        "gt_voxels": 0,
        "missing_prediction": False,
    }


def test_eval_json_is_strict_json_with_null_for_infinity(tmp_path: Path) -> None:
    empty = write_mask(tmp_path / "empty.nii.gz", np.zeros(EVAL_SHAPE))
    gt = write_mask(tmp_path / "gt.nii.gz", cube())
    result = run_eval(empty, gt, "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output

    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    report = json.loads((tmp_path / "s.json").read_text(), parse_constant=reject)
    assert report["cases"][0]["hd95"] is None and report["cases"][0]["dice"] == 0.0
    assert (report["summary"][0]["hd95_mean"], report["summary"][0]["hd95_infinite"]) == (None, 1)
    assert csv_rows(tmp_path / "s.csv")["gt", "1"]["hd95"] == "inf"  # the CSV keeps inf, read back as infinity


def test_eval_takes_a_picture_mask_on_the_grid_of_the_other(tmp_path: Path) -> None:
    """A PNG prediction (another tool's export) of a one-slice ground truth with a spacing was refused
    ("spacing differs: none in its file vs ..."), though a PNG mask prompt is taken on its image's
    grid: its pixels are those of the same slice, and distances are in the other file's mm."""
    from PIL import Image

    truth = np.zeros((1, 40, 50), np.uint8)
    truth[0, 10:30, 12:36] = 1
    shifted = np.roll(truth, 3, axis=2)
    image = sitk.GetImageFromArray(truth[0])
    image.SetSpacing((0.5, 0.8))
    sitk.WriteImage(image, str(tmp_path / "gt.nii.gz"))
    image = sitk.GetImageFromArray(shifted[0])
    image.SetSpacing((0.5, 0.8))
    sitk.WriteImage(image, str(tmp_path / "pred.nii.gz"))
    Image.fromarray(shifted[0]).save(tmp_path / "pred.png")
    Image.fromarray(truth[0]).save(tmp_path / "gt.png")
    scores = {}
    for pred, gt in (("pred.nii.gz", "gt.nii.gz"), ("pred.png", "gt.nii.gz"), ("pred.nii.gz", "gt.png")):
        result = run_eval(tmp_path / pred, tmp_path / gt, "--json", tmp_path / "s.json")
        assert result.exit_code == 0, result.output
        (scores[pred, gt],) = json.loads((tmp_path / "s.json").read_text())["cases"]
        assert "pixels" not in result.output
    first = scores["pred.nii.gz", "gt.nii.gz"]
    assert first["dice"] == pytest.approx(2 * 21 / 48) and 0.5 <= first["hd95"] <= 1.5  # 3 columns of 0.5 mm apart at most
    assert all({**row, "case": "gt"} == {**first, "case": "gt"} for row in scores.values())
    result = run_eval(tmp_path / "pred.png", write_mask(tmp_path / "other.nii.gz", np.zeros((1, 40, 49))))
    assert result.exit_code != 0 and "shape" in result.output


def test_metrics_take_what_a_notebook_passes_and_refuse_spacing_in_one_line() -> None:
    """A spacing given as one number or a string was a TypeError ("'float' object is not iterable")
    or numpy's "could not convert string to float"; `evaluate_frames` of lists (which `evaluate`
    takes) was an AttributeError. Spacing mistakes are now the one-line InputError; lists score."""
    from medsam2.metrics import evaluate_frames

    gt = np.zeros((3, 10, 10), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = np.roll(gt, 1, axis=2)
    for spacing in (1.0, "1,1,1", None, [[1, 1, 1]], (1, float("nan"), 1)):
        for score in (lambda s: hd95(pred, gt, s), lambda s: nsd(pred, gt, s), lambda s: evaluate(pred, gt, s)):
            with pytest.raises(InputError, match="spacing .*: need 3 positive values in \\(x, y, z\\) order") as raised:
                score(spacing)
            assert "\n" not in str(raised.value)
    assert hd95(pred, gt, np.array([1.0, 1.0, 1.0])) == hd95(pred, gt, [1, 1, 1]) == 1.0
    from_lists = evaluate_frames(pred.tolist(), gt.tolist(), (0.5, 0.5))
    assert from_lists == evaluate_frames(pred, gt, (0.5, 0.5))
    assert from_lists[0].dice == pytest.approx(0.75) and from_lists[0].hd95 == pytest.approx(0.5)
