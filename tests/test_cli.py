"""The `medsam2` command end to end: info, eval, segment, demo and every bad-input case."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import click.testing
import typer
from PIL import Image
from typer.testing import CliRunner

from medsam2.cli import models as command_models
from medsam2.cli.main import app, stop_on_signal, with_plain_value_labels
from medsam2.engine.prompts import box_from_mask
from medsam2.io import Volume, load_image, save_mask
from medsam2.io.masks import load_mask, stored_array
from medsam2.metrics import dice
from medsam2.resources import packaged_file

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def lesion_case(shared_data: Path) -> Path:
    return shared_data / "ct_lesion" / "CT_Lesion_000002_03_01_035-047.npz"


@pytest.fixture(scope="module")
def lesion_nifti(tmp_path_factory, lesion_case: Path) -> tuple[Path, Path]:
    """The lesion case as a NIfTI image and its ground truth as a NIfTI mask."""
    folder = tmp_path_factory.mktemp("nifti")
    volume = load_image(lesion_case)
    image = sitk.GetImageFromArray(volume.array.astype(np.int16))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    sitk.WriteImage(image, str(folder / "case.nii.gz"))
    gt = save_mask(stored_array(volume, "gts"), like=volume, path=folder / "case_gt.nii.gz")
    return folder / "case.nii.gz", gt


def test_the_command_line_starts_without_the_heavy_optional_imports() -> None:
    """Every command pays for what `medsam2` imports at start: no timm or torchvision ever (they
    would pull a CUDA torch), and MONAI (metrics) and scipy.signal (echo measurements) only when used."""
    probe = "import sys, medsam2.cli.main; print(' '.join(m for m in ('timm', 'torchvision', 'monai', 'scipy.signal') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_version_and_help_through_the_installed_command() -> None:
    version = subprocess.run([sys.executable, "-m", "medsam2.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("medsam2 ")
    # A mistyped command line is bad input like any other: one line, status 2 (not typer's panel).
    for args, line in [
        (["segment", "scan.nii.gz"], "error: medsam2 segment: Missing option '-o' / '--output'. (see medsam2 segment --help)"),
        (["eval", "a", "b", "--nsd-tolerance", "x"], "error: medsam2 eval: Invalid value for '--nsd-tolerance': Input should be a valid number"),
        (["segmnet"], "error: medsam2: No such command 'segmnet'."),
    ]:
        mistyped = subprocess.run([sys.executable, "-m", "medsam2.cli", *args], capture_output=True, text=True)
        assert mistyped.returncode == 2 and mistyped.stdout == "", mistyped
        (shown,) = mistyped.stderr.splitlines()
        assert shown.startswith(line), shown
    # Values labelled as typed: a flag takes none, a repeatable option one each time.
    help_text = subprocess.run(
        [sys.executable, "-m", "medsam2.cli", "segment", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    ).stdout
    assert re.search(r"--box,--frame-box +<str> +Box Z,X1,Y1,X2,Y2", help_text) and re.search(r"--keep-largest +Keep only", help_text)
    assert "<bool>" not in help_text and "list[" not in help_text
    for command in ("info", "eval", "segment", "demo"):
        shown = run(command, "--help")
        assert shown.exit_code == 0
        assert "Example" in shown.output, command
    # Paragraphs are rewrapped to the terminal (not broken where the docstring's lines end), and
    # placeholders in angle brackets are not taken for markup.
    wide = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200"}).output
    assert "X,Y pixel column and row in that slice (as medsam2 info and most viewers count from 0)." in wide
    assert "$MEDSAM2_MODEL_<NAME>" in wide


def test_every_help_shows_whole_option_names_at_80_columns() -> None:
    """No option name is cut (`--freeze-image-en…`) on an 80-column terminal, and bounded numbers
    are labelled as typed (`<int> [x>=1]`)."""
    command = with_plain_value_labels(typer.main.get_command(app))
    commands = [[name] for name in command.commands if name != "annotate"]
    commands += [["annotate", name] for name in command.commands["annotate"].commands]
    for words in commands:
        shown = click.testing.CliRunner().invoke(command, [*words, "--help"], env={"COLUMNS": "80"})
        assert shown.exit_code == 0 and "Options" in shown.output, words
        assert "…" not in shown.output and " range>" not in shown.output, (words, shown.output)
        assert max(map(len, shown.output.splitlines())) <= 80, words
    assert len(commands) > 10


def test_info_describes_image_and_mask(lesion_nifti) -> None:
    image, gt = lesion_nifti
    facts = json.loads(run("info", image, "--json").stdout)
    assert facts["shape_zyx"] == [13, 512, 512]
    assert facts["spacing_xyz_mm"][2] == 5.0
    assert facts["orientation"] == "PLI"
    mask_facts = json.loads(run("info", gt, "--json").stdout)
    assert set(mask_facts["labels"]) == {"1"}


def test_info_reads_npz_masks_and_says_when_a_file_gives_no_spacing(tmp_path: Path, lesion_case: Path) -> None:
    """An npz's labels are its gts (beside imgs) or its segs (a mask medsam2 wrote: no imgs at all);
    a picture's spacing is unknown, not 1 mm, and its orientation too."""
    truth = np.load(lesion_case)["gts"]
    voxels = int(np.count_nonzero(truth))
    assert json.loads(run("info", lesion_case, "--json").stdout)["labels (gts)"] == {"1": voxels}
    np.savez(tmp_path / "segs.npz", segs=truth)
    shown = run("info", tmp_path / "segs.npz")
    assert shown.exit_code == 0, shown.output
    assert f"labels: {{'1': {voxels}}}" in shown.stdout and "spacing_xyz_mm: unknown" in shown.stdout
    Image.fromarray(truth[6] * 255).save(tmp_path / "slice.png")
    picture = json.loads(run("info", tmp_path / "slice.png", "--json").stdout)
    # Nor is it placed in a patient: no origin, orientation or direction (not DICOM's LPS by default).
    assert [picture[key] for key in ("spacing_xyz_mm", "origin_xyz_mm", "orientation", "direction")] == [None] * 4
    # A palette PNG label map (PASCAL VOC's) shows colours; its labels are its indices, as masks are read.
    labels = truth[6].copy()
    labels[:5, :5] = 2
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "voc.png")
    voc = json.loads(run("info", tmp_path / "voc.png", "--json").stdout)
    assert voc["channels"] == 3 and voc["labels (palette indices)"] == {"1": int(np.count_nonzero(labels == 1)), "2": 25}
    Image.fromarray(truth[6] > 0).save(tmp_path / "one_bit.png")  # 0/1 as masks read it, not 0/255
    assert json.loads(run("info", tmp_path / "one_bit.png", "--json").stdout)["labels"] == {"1": int(np.count_nonzero(truth[6]))}


def test_info_describes_a_dicom_seg_by_its_segments(tmp_path: Path) -> None:
    """A DICOM-SEG's pixels are frames of the series it segments: info lists its segments and that
    series (it used to read the frames as an image: "labels: {'255': ...}", orientation and all)."""
    scan = packaged_file("pydicom", "pydicom/data/test_files/CT_small.dcm", "pip install pydicom")
    image = load_image(scan)
    labels = np.zeros(image.shape, dtype=np.uint16)
    labels[0, 10:20, 10:20], labels[0, 30:40, 30:40] = 1, 500  # by object id: segments 1 and 2, not 500
    save_mask(labels, like=image, path=tmp_path / "seg.dcm", names={500: "spinal canal"})
    facts = json.loads(run("info", tmp_path / "seg.dcm", "--json").stdout)
    assert facts["segments"] == {"1": "label 1", "500": "spinal canal"} and facts["frames"] == 2
    assert facts["segments_series"] == str(pydicom.dcmread(scan).SeriesInstanceUID) and "labels" not in facts


def test_info_on_dicom_files_with_header_quirks_prints_only_the_facts() -> None:
    """pydicom reads past a value of the wrong form or an unexpected VR encoding, warning in lines
    that name its own source file; the command prints the facts and nothing on stderr. A colour
    image's channel values are not listed as labels."""
    for name, channels in (("badVR.dcm", 1), ("SC_rgb_jpeg.dcm", 3), ("SC_rgb_jpeg_dcmtk.dcm", 3)):  # the last: colour bars
        file = packaged_file("pydicom", f"pydicom/data/test_files/{name}", "pip install pydicom")
        shown = subprocess.run([sys.executable, "-m", "medsam2.cli", "info", str(file), "--json"], capture_output=True, text=True)
        assert shown.returncode == 0 and shown.stderr == "", (name, shown.stderr)
        facts = json.loads(shown.stdout)
        assert facts["shape_zyx"][0] == 1 and facts["channels"] == channels
    assert "labels" not in facts


def test_eval_file_pair_and_folders(tmp_path: Path, lesion_nifti) -> None:
    image, gt = lesion_nifti
    truth = load_image(gt)
    shifted = np.roll(truth.array, 3, axis=2)
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    save_mask(shifted, like=truth, path=preds / "a.nii.gz")
    save_mask(truth.array, like=truth, path=preds / "b.nii.gz")
    for name in ("a", "b"):
        save_mask(truth.array, like=truth, path=gts / f"{name}.nii.gz")
    result = run("eval", preds / "a.nii.gz", gts / "a.nii.gz", "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "a.json").read_text())["cases"][0]
    assert scores["dice"] == pytest.approx(dice(shifted > 0, truth.array > 0))
    assert scores["hd95"] == pytest.approx(3 * truth.spacing[0], rel=1e-3)
    result = run("eval", preds, gts, "--csv", tmp_path / "all.csv", "--nsd-tolerance", "5")
    assert result.exit_code == 0, result.output
    assert "Summary" in result.stdout
    rows = (tmp_path / "all.csv").read_text().splitlines()
    assert rows[0].startswith("case,label,dice,nsd,hd95") and len(rows) == 3
    assert rows[2].split(",")[2] == "1.0"
    # Both reports land together; a folder named for one is refused before any scoring.
    both = run("eval", preds, gts, "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")
    assert both.exit_code == 0 and (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()
    assert_one_line_error(run("eval", preds, gts, "--csv", tmp_path), "--csv", "is a folder; name the report file")
    # A prediction with nothing in it has an infinite HD95: the summary says it left one out.
    save_mask(np.zeros_like(truth.array), like=truth, path=preds / "c.nii.gz")
    save_mask(truth.array, like=truth, path=gts / "c.nii.gz")
    summary = run("eval", preds, gts).stdout
    assert re.search(r"± \d+\.\d+ \(\+1 inf\)", summary), summary


def test_segment_writes_a_mask_in_the_input_geometry(tmp_path: Path, lesion_nifti, lesion_case: Path) -> None:
    image, gt = lesion_nifti
    truth = stored_array(load_image(lesion_case), "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    x1, y1, x2, y2 = box_from_mask(truth[key])
    out = tmp_path / "seg.nii.gz"
    result = run("segment", image, "-o", out, "--box", f"{key},{x1},{y1},{x2},{y2}", "--overlay", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    written, source = nib.load(out), nib.load(image)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    mask = load_image(out)
    assert dice(mask.array > 0, truth) > 0.75
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_segment_direction_propagates_one_way_from_the_prompted_slice(tmp_path: Path, lesion_case: Path) -> None:
    truth = stored_array(load_image(lesion_case), "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    x1, y1, x2, y2 = box_from_mask(truth[key])
    both = run("segment", lesion_case, "--box", f"{key},{x1},{y1},{x2},{y2}", "-o", tmp_path / "both.npz")
    assert both.exit_code == 0, both.output
    labels = np.load(tmp_path / "both.npz")["segs"] > 0
    assert labels[:key].any() and labels[key + 1 :].any()
    for direction, kept in (("forward", slice(key, None)), ("backward", slice(None, key + 1))):
        out = tmp_path / f"{direction}.npz"
        result = run("segment", lesion_case, "--box", f"{key},{x1},{y1},{x2},{y2}", "--direction", direction, "-o", out)
        assert result.exit_code == 0, result.output
        one_way = np.load(out)["segs"] > 0
        np.testing.assert_array_equal(one_way[kept], labels[kept])
        assert one_way.sum() == one_way[kept].sum()
    assert_one_line_error(run("segment", lesion_case, "--box", f"{key},{x1},{y1},{x2},{y2}", "--direction", "up", "-o", tmp_path / "x.npz"),
                          "--direction must be one of both, forward, backward, not 'up'")
    assert not (tmp_path / "x.npz").exists()


def test_segment_erase_stops_propagation_on_a_slice_and_clears_it_in_an_edit(tmp_path: Path, lesion_case: Path) -> None:
    truth = stored_array(load_image(lesion_case), "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    x1, y1, x2, y2 = box_from_mask(truth[key])
    box = f"{key},{x1},{y1},{x2},{y2}"
    assert run("segment", lesion_case, "--box", box, "-o", tmp_path / "free.npz").exit_code == 0
    free = np.load(tmp_path / "free.npz")["segs"]
    assert free[key + 2 :].any()
    stopped = run("segment", lesion_case, "--box", box, "--erase", str(key + 2), "-o", tmp_path / "stopped.npz")
    assert stopped.exit_code == 0, stopped.output
    labels = np.load(tmp_path / "stopped.npz")["segs"]
    np.testing.assert_array_equal(labels[: key + 2], free[: key + 2])  # the run from the box, up to the erased slice
    assert not labels[key + 2 :].any()
    # Correcting the free result: the erased slice is cleared, every other slice kept as it was.
    edited = run("segment", lesion_case, "--edit", tmp_path / "free.npz", "--erase", f"{key + 2},1", "-o", tmp_path / "edited.npz")
    assert edited.exit_code == 0, edited.output
    expected = free.copy()
    expected[key + 2] = 0
    np.testing.assert_array_equal(np.load(tmp_path / "edited.npz")["segs"], expected)
    assert_one_line_error(run("segment", lesion_case, "--erase", str(key), "-o", tmp_path / "x.npz"), "object 1: an erase takes an object off a slice")
    assert_one_line_error(run("segment", lesion_case, "--box", box, "--erase", "1,2,3", "-o", tmp_path / "x.npz"), "--erase '1,2,3': expected 1 or 2 numbers")


def test_the_object_on_a_one_slice_image_with_spacing_is_an_area(tmp_path: Path, lesion_case: Path) -> None:
    """A one-slice NIfTI's size was given in mL from its third spacing, which is no thickness (the
    slice's distance to nothing): an area in mm² is what it has."""
    volume = load_image(lesion_case)
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    nib.save(nib.Nifti1Image(volume.array[key].T.astype(np.int16), np.diag([-0.7, -0.6, 3.0, 1.0])), tmp_path / "slice.nii.gz")
    x1, y1, x2, y2 = box_from_mask(truth[key])
    result = run("segment", tmp_path / "slice.nii.gz", "--box", f"0,{x1},{y1},{x2},{y2}", "-o", tmp_path / "seg.nii.gz")
    assert result.exit_code == 0, result.output
    pixels = int(np.count_nonzero(np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)))
    assert pixels > 100 and result.stdout.splitlines()[-1] == f"object 1: {pixels} pixels, {pixels * 0.7 * 0.6:.1f} mm²"


def test_a_picture_without_spacing_gets_sizes_in_pixels_not_millilitres(tmp_path: Path, lesion_case: Path) -> None:
    """A PNG says nothing of its pixels' size: mL (or HD95 in mm) computed as if they were 1 mm would be made up."""
    volume = load_image(lesion_case)
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    Image.fromarray(volume.array[key]).save(tmp_path / "slice.png")
    Image.fromarray(truth[key].astype(np.uint8)).save(tmp_path / "truth.png")
    x1, y1, x2, y2 = box_from_mask(truth[key])
    result = run("segment", tmp_path / "slice.png", "--box", f"0,{x1},{y1},{x2},{y2}", "-o", tmp_path / "seg.png")
    assert result.exit_code == 0, result.output
    pixels = int(np.count_nonzero(np.asarray(Image.open(tmp_path / "seg.png"))))
    assert result.stdout.splitlines()[-1] == f"object 1: {pixels} pixels (the image file gives no spacing: no size in mL)"
    assert "propagating" not in result.stderr, result.stderr  # one slice: nothing to propagate, no empty bar
    # One picture has no coronal or sagittal slices (each would be a line of pixels): refused, nothing written.
    sideways = run("segment", tmp_path / "slice.png", "--axis", "coronal", "--box", f"0,{x1},{y1},{x2},{y2}", "-o", tmp_path / "side.png")
    assert_one_line_error(sideways, f"--axis coronal: {tmp_path / 'slice.png'} is one 2D image, segmented in its own plane (leave --axis out)")
    assert not (tmp_path / "side.png").exists()
    scored = run("eval", tmp_path / "seg.png", tmp_path / "truth.png")
    assert scored.exit_code == 0, scored.output
    assert "1 ground truth without a spacing (pixel units): HD95 and the NSD tolerance are in pixels there, not mm: truth" in scored.stdout
    assert "HD95 (px)" in scored.stdout and "HD95 (mm)" not in scored.stdout
    # The same label map as NIfTI (spacing in the file) gets no note (an npz with its spacing keeps
    # mL: test_segment_prompts_file_with_two_named_objects).
    save_mask(truth.astype(np.uint8), like=volume, path=tmp_path / "truth.nii.gz")
    assert "pixel units" not in run("eval", tmp_path / "truth.nii.gz", tmp_path / "truth.nii.gz").stdout
    # A prediction in mm against a truth whose file gives no geometry: the truth's pixels are the
    # prediction's, in its mm (test_eval_takes_a_picture_mask_on_the_grid_of_the_other).
    key_slice = truth[key : key + 1].astype(np.uint8)
    save_mask(key_slice, like=Volume(key_slice, spacing=volume.spacing), path=tmp_path / "slice_truth.nii.gz")
    placed = run("eval", tmp_path / "slice_truth.nii.gz", tmp_path / "truth.png")
    assert placed.exit_code == 0 and "HD95 (mm)" in placed.stdout and "pixel units" not in placed.stdout, placed.output


def test_segment_edit_corrects_a_mask_where_it_is_prompted_and_keeps_the_rest(tmp_path: Path, lesion_nifti, lesion_case: Path) -> None:
    """A label map missing the lesion on one slice, corrected with a box there: every other slice
    stays as it was in the file, the boxed one gets the lesion."""
    image, _ = lesion_nifti
    volume = load_image(image)
    truth = stored_array(load_image(lesion_case), "gts").astype(np.uint8)
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    missing = key + 1
    given = truth.copy()
    given[missing] = 0
    save_mask(given, like=volume, path=tmp_path / "given.nii.gz")
    x1, y1, x2, y2 = box_from_mask(truth[missing] > 0)
    out = tmp_path / "edited.nii.gz"
    result = run("segment", image, "--edit", tmp_path / "given.nii.gz", "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", out)
    assert result.exit_code == 0, result.output
    edited = load_image(out).array
    others = [index for index in range(truth.shape[0]) if index != missing]
    np.testing.assert_array_equal(edited[others], given[others])
    assert dice(edited[missing] > 0, truth[missing] > 0) > 0.8
    assert_one_line_error(run("segment", image, "--edit", out, "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", out), "would replace the input")
    # A box without an ID on a map whose lesion is label 3 adds object 1: said, as 3 hides it there.
    save_mask(given * 3, like=volume, path=tmp_path / "given3.nii.gz")
    added = run("segment", image, "--edit", tmp_path / "given3.nii.gz", "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", tmp_path / "added.nii.gz")
    assert added.exit_code == 0 and "warning: --edit given3.nii.gz holds label(s) 3, not 1: the prompts of object 1 add it" in added.stderr
    save_mask(np.zeros_like(given), like=volume, path=tmp_path / "empty.nii.gz")
    empty = run("segment", image, "--edit", tmp_path / "empty.nii.gz", "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", out)
    assert_one_line_error(empty, "empty.nii.gz: the label map is empty: it holds no object")
    save_mask(given[:5], like=Volume(array=volume.array[:5], spacing=volume.spacing), path=tmp_path / "short.nii.gz")
    assert_one_line_error(run("segment", image, "--edit", tmp_path / "short.nii.gz", "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", out), "shape (Z, Y, X) differs")
    # The scan itself picked as the map (a uint8 CT would be 255 objects, each on every slice).
    assert_one_line_error(run("segment", image, "--edit", image, "--box", f"{missing},{x1},{y1},{x2},{y2}", "-o", out), "an image, not a label map")


def test_outputs_that_cannot_all_be_written_leave_none_behind(tmp_path: Path, lesion_case: Path) -> None:
    """The overlay montage (about 170 kB) does not fit under a 100 kB file-size limit, the mask (4 kB)
    would: the write fails with one line, the mask is not written, and the earlier mask and overlay at
    those paths stay as they were (they land together or not at all)."""
    (tmp_path / "seg.nii.gz").write_bytes(b"earlier mask")
    (tmp_path / "o.png").write_bytes(b"earlier overlay")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "medsam2.cli", "segment", lesion_case, "--box", "6,200,200,260,260"]
    limited = subprocess.run(
        [*command, "-o", "seg.nii.gz", "--overlay", "o.png"], cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit_file_size
    )
    assert limited.returncode == 2 and "propagating: 100%" in limited.stderr
    # In a log the finished progress bar ends its line (cleared, it would leave the error on its line).
    assert limited.stderr.split("\n")[-2:] == ["error: o.png: cannot write (File too large)", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "seg.nii.gz"]
    assert (tmp_path / "seg.nii.gz").read_bytes() == b"earlier mask" and (tmp_path / "o.png").read_bytes() == b"earlier overlay"


def test_segment_prompts_file_with_two_named_objects(tmp_path: Path, lesion_case: Path) -> None:
    volume = load_image(lesion_case)
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    lesion_slices = np.flatnonzero(truth.any(axis=(1, 2)))
    prompts = {
        "objects": [
            {"id": 1, "name": "lesion", "prompts": [{"slice": key, "box": list(box_from_mask(truth[key]))}]},
            {"id": 3, "name": "lesion top", "prompts": [{"slice": int(lesion_slices.max()), "box": list(box_from_mask(truth[lesion_slices.max()]))}]},
        ]
    }
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "seg.npz"
    result = run("segment", lesion_case, "-o", out, "--prompts", tmp_path / "prompts.json")
    assert result.exit_code == 0, result.output
    assert "object 1 (lesion)" in result.stdout and "object 3 (lesion top)" in result.stdout
    assert re.search(r"object 1 \(lesion\): \d+ voxels, \d+\.\d\d mL", result.stdout)  # the npz gives its spacing
    segs = np.load(out)["segs"]
    assert set(np.unique(segs)) == {0, 1, 3}
    # Indices are whole numbers: 2.5 is a mistake to report, not slice 2.
    prompts["objects"][0]["prompts"][0]["slice"] = key + 0.5
    (tmp_path / "fractional.json").write_text(json.dumps(prompts))
    fractional = run("segment", lesion_case, "-o", tmp_path / "other.npz", "--prompts", tmp_path / "fractional.json")
    assert_one_line_error(fractional, f"object 1: slice must be a whole number, got {key + 0.5}")
    # Two objects with one id would merge into one under the second's name; a box and a RECIST line
    # in one prompt are two boxes.
    prompts["objects"][0]["prompts"][0]["slice"] = key
    for change, message in [
        (lambda objects: objects[1].update(id=1), "object id 1 is given to two objects; give each its own"),
        (lambda objects: objects[0]["prompts"][0].update(recist=[1, 1, 9, 9]), "object 1: a prompt with both a box and a RECIST line"),
    ]:
        broken = json.loads(json.dumps(prompts))
        change(broken["objects"])
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        assert_one_line_error(run("segment", lesion_case, "-o", tmp_path / "other.npz", "--prompts", tmp_path / "broken.json"), message)
    # A key given twice: JSON parsers keep the last value without a word.
    twice = json.dumps(prompts).replace('"objects":', '"objects": [], "objects":', 1)
    (tmp_path / "twice.json").write_text(twice)
    assert_one_line_error(run("segment", lesion_case, "-o", tmp_path / "other.npz", "--prompts", tmp_path / "twice.json"), "twice.json: key 'objects' given twice in one object")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], 'the file has no "objects": expected {"objects": [{"id": 1, "prompts": [...]}, ...]}'),
        ({"objects": []}, '"objects" is empty: there is nothing to segment'),
        ({"objects": [5]}, 'objects[0] is 5, not an object with "prompts"'),
        ({"objects": [{"name": "a"}]}, 'object 1 has no "prompts": expected "prompts": [{"slice": 40, "box": [...]}, ...]'),
        ({"objects": [{"prompts": {}}]}, 'object 1: "prompts" is {}'),
        ({"objects": [{"name": 3, "prompts": []}]}, "object 1: name 3 is not text"),
        ({"objects": [{"prompts": [{"box": [1, 2, 9, 9]}]}]}, 'object 1: a prompt without "slice"'),
        ({"objects": [{"prompts": [{"slice": 3, "box": [1, 2]}]}]}, "object 1: box [1, 2] is not a list of 4 numbers"),
        ({"objects": [{"prompts": [{"slice": 3, "points": [1, 2]}]}]}, "object 1: point (x, y) 1 is not a list of 2 numbers"),
        ({"objects": [{"prompts": [{"slice": 3, "points": [[1, 2]], "labels": 1}]}]}, "object 1: labels 1 is not a list"),
    ],
)
def test_a_prompts_file_of_another_shape_is_told_in_words(tmp_path: Path, lesion_case: Path, content, message: str) -> None:
    """Not a Python exception's text ("list indices must be integers", "KeyError: 'objects'")."""
    (tmp_path / "p.json").write_text(json.dumps(content))
    result = run("segment", lesion_case, "-o", tmp_path / "seg.npz", "--prompts", tmp_path / "p.json")
    assert_one_line_error(result, f"p.json: {message}")
    assert not (tmp_path / "seg.npz").exists()


def test_a_blank_image_is_refused_not_segmented(tmp_path: Path, lesion_nifti: tuple[Path, Path]) -> None:
    """The model would draw a mask from the box alone; it would mean nothing, and exit 0 would hide that."""
    blank = tmp_path / "blank.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 64, 64), np.int16)), str(blank))
    refused = run("segment", blank, "--box", "1,10,10,30,30", "-o", tmp_path / "seg.nii.gz")
    assert_one_line_error(refused, "blank.nii.gz: the model sees one grey level everywhere", "nothing to segment")
    # A real scan seen through a window above all its values is as blank to the model.
    image, _ = lesion_nifti
    outside = run("segment", image, "--box", "6,240,250,290,300", "--window", "10,3000", "-o", tmp_path / "seg.nii.gz")
    assert_one_line_error(outside, "the model sees one grey level everywhere")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_segment_from_the_npz_recist_marker(tmp_path: Path, lesion_case: Path, draw_recist) -> None:
    volume = load_image(lesion_case)
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    marker = np.zeros(truth.shape, dtype=np.uint8)
    marker[key] = draw_recist(truth[key])
    arrays = dict(np.load(lesion_case))
    arrays["recist"] = marker
    case = tmp_path / "with_recist.npz"
    np.savez_compressed(case, **arrays)
    result = run("segment", case, "-o", tmp_path / "seg.nii.gz")
    assert result.exit_code == 0, result.output
    assert dice(load_image(tmp_path / "seg.nii.gz").array > 0, truth) > 0.5


def test_an_npz_recist_array_not_shaped_as_its_image_is_one_line_error(tmp_path: Path, lesion_case: Path) -> None:
    # A recist key holding the line's numbers (Z, X1, Y1, X2, Y2), not a marker volume, ended
    # `segment` (and failed a batch case) with numpy's "Calling nonzero on 0d arrays" traceback.
    arrays = dict(np.load(lesion_case))
    arrays["recist"] = np.array([6, 246, 273, 276, 322])
    case = tmp_path / "line_numbers.npz"
    np.savez_compressed(case, **arrays)
    refused = run("segment", case, "-o", tmp_path / "seg.nii.gz")
    assert_one_line_error(refused, "line_numbers.npz: its recist array has shape (5,), not the image's (13, 512, 512)")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_demo_on_a_shared_case(tmp_path: Path, lesion_case: Path) -> None:
    result = run("demo", "--case", lesion_case, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    dsc = float(result.stdout.split("Dice ")[1].split()[0])
    assert dsc > 0.75
    assert (tmp_path / "CT_Lesion_000002_03_01_035-047_mask.nii.gz").is_file()
    assert (tmp_path / "CT_Lesion_000002_03_01_035-047_overlay.png").is_file()


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    assert_one_line_error(run("info", tmp_path / "nope.nii.gz"), "nope.nii.gz")
    (tmp_path / "scan.xyz").write_text("hello")
    assert_one_line_error(run("info", tmp_path / "scan.xyz"), "scan.xyz")


def test_truncated_nifti(tmp_path: Path, lesion_nifti) -> None:
    image, _ = lesion_nifti
    data = image.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("info", tmp_path / "cut.nii.gz"), "cut.nii.gz")


def test_4d_and_nan_images(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), tmp_path / "four_d.nii.gz")
    assert_one_line_error(run("info", tmp_path / "four_d.nii.gz"), "four_d.nii.gz")
    values = np.zeros((8, 8, 4), np.float32)
    values[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "nan.nii.gz")
    assert_one_line_error(run("info", tmp_path / "nan.nii.gz"), "nan.nii.gz")
    out = tmp_path / "never.nii.gz"
    assert_one_line_error(run("segment", tmp_path / "nan.nii.gz", "-o", out, "--box", "1,1,1,5,5"), "nan.nii.gz")
    assert not out.exists()


def test_empty_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("info", tmp_path / "empty"), "empty")


def test_eval_with_mismatched_shape_or_geometry(tmp_path: Path, lesion_nifti) -> None:
    _, gt = lesion_nifti
    truth = load_image(gt)
    small = sitk.GetImageFromArray(truth.array[:5])
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    json_out = tmp_path / "scores.json"
    assert_one_line_error(run("eval", tmp_path / "small.nii.gz", gt, "--json", json_out), "small.nii.gz")
    moved = sitk.GetImageFromArray(truth.array)
    moved.SetSpacing(truth.spacing)
    moved.SetOrigin((50.0, 0.0, 0.0))
    moved.SetDirection(truth.direction)
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    assert_one_line_error(run("eval", tmp_path / "moved.nii.gz", gt, "--json", json_out), "moved.nii.gz")
    assert not json_out.exists()


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--box", "6,10,10,5.5,40"], "box [10, 10, 5.5, 40] is inverted or empty"),
        (["--box", "6,10,10,900,40"], "box [10, 10, 900, 40] reaches outside the 512x512 slice"),
        (["--box", "40,10,10,50,50"], "slice out of range"),
        (["--axis", "coronal", "--box", "6,10,2,50,40"], "prompt on coronal slice 6 (object 1): box [10, 2, 50, 40] reaches outside the 512x13 coronal slice (x 0..511, y 0..12)"),
        (["--box", "6,10,10"], "--box"),
        (["--point", "6,x,3"], "--point"),
        (["--axis", "oblique", "--box", "6,10,10,50,50"], "--axis"),
        (["--window", "wide", "--box", "6,10,10,50,50"], "window"),
        (["--model", "missing.pt", "--box", "6,10,10,50,50"], "missing.pt"),
        ([], "no prompt"),
        (["--prompts", "."], ".: is a folder; the prompts are a JSON file"),
        (["--box", "6,10,10,50,50", "--box", "6,20,20,60,60"], "object 1 has two boxes or masks on slice 6"),
        (["--box", "6,10,10,50,50", "--recist", "6,20,20,60,60"], "object 1 has two boxes or masks on slice 6 (a RECIST line is a box)"),
        (["--box", "6,10,10,50,50", "--point", "7,20,20,0,2"], "object 2: background clicks alone mark no object"),  # before the model
    ],
)
def test_bad_prompts_and_options(tmp_path: Path, lesion_case: Path, flags: list[str], fragment: str) -> None:
    out = tmp_path / "seg.nii.gz"
    assert_one_line_error(run("segment", lesion_case, "-o", out, *flags), fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "output, overlay, fragment",
    [
        ("seg.xyz", None, "cannot write masks as '.xyz'"),
        ("outdir", None, "outdir: no extension to tell the mask's format; name the file, e.g. "),  # `-o outdir/`
        ("seg.png", None, "PNG holds one 2D slice but the image has 13"),
        ("seg.dcm", None, "DICOM-SEG output needs a DICOM input image"),
        ("seg.nii.gz", "look.jpg", "the overlay montage is a PNG image"),
        ("/proc/nowhere/seg.nii.gz", None, "cannot write"),  # a virtual file system: permission bits may say yes
        ("seg.nii.gz", "/proc/nowhere/look.png", "cannot write"),  # and the mask is not written either
    ],
)
def test_unwritable_outputs_are_refused_before_the_model_runs(
    tmp_path: Path, lesion_case: Path, monkeypatch: pytest.MonkeyPatch, output: str, overlay: str | None, fragment: str
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output names were checked")

    monkeypatch.setattr(command_models, "load_predictor", no_model)
    flags = ["--overlay", tmp_path / overlay] if overlay else []
    result = run("segment", lesion_case, "-o", tmp_path / output, "--box", "6,246,273,276,322", *flags)
    assert_one_line_error(result, output if overlay is None else overlay, fragment)
    assert not any(tmp_path.iterdir())


def test_a_dicom_seg_its_image_cannot_have_is_refused_before_the_model_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's RT Dose file is a multi-frame DICOM image but not an enhanced one: a SEG needs the
    functional groups such images carry, which shows before the segmentation, not after it, named
    by its tag (not as "'FileDataset' object has no attribute")."""
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the DICOM-SEG was tried")

    monkeypatch.setattr(command_models, "load_predictor", no_model)
    dose = packaged_file("pydicom", "pydicom/data/test_files/rtdose.dcm", "pip install pydicom")
    result = run("segment", dose, "-o", tmp_path / "seg.dcm", "--box", "7,2,2,8,8")
    assert_one_line_error(
        result, "rtdose.dcm: cannot make a DICOM-SEG from this image (its files lack the DICOM attribute SharedFunctionalGroupsSequence (5200,9229))"
    )
    # A two-frame secondary capture without plane positions: highdicom makes one frame for two marked
    # ones, a SEG that reads back empty; refused too (was written, 'on 2 of 2 slices').
    capture = packaged_file("pydicom", "pydicom/data/test_files/SC_rgb_rle_2frame.dcm", "pip install pydicom")
    result = run("segment", capture, "-o", tmp_path / "seg.dcm", "--box", "0,10,10,40,40")
    assert_one_line_error(result, "its 1 frame would not map onto the 2 marked frames of the image; write the mask in another format (.nii.gz)")
    assert not any(tmp_path.iterdir())


def test_outputs_never_replace_inputs_and_mismatched_masks_are_refused(
    tmp_path: Path, lesion_nifti, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs and prompts were checked")

    monkeypatch.setattr(command_models, "load_predictor", no_model)
    image, gt = lesion_nifti
    box = ["--box", "6,246,273,276,322"]
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    refusals = [
        (["-o", image, *box], "would replace the input"),
        (["-o", gt, "--mask-prompt", gt], "would replace the input"),
        (["-o", tmp_path / "a_file" / "seg.nii.gz", *box], "a_file is a file, not a folder"),
        (["-o", tmp_path / "a_folder", *box], "is a folder; name the mask file"),
    ]
    for flags, fragment in refusals:
        assert_one_line_error(run("segment", image, *flags), fragment)
    # A mask prompt must overlay the scan, not only have its shape.
    truth = load_image(gt)
    shifted = sitk.GetImageFromArray(truth.array)
    shifted.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(shifted, str(tmp_path / "other_spacing.nii.gz"))
    mismatched = run("segment", image, "-o", tmp_path / "seg.nii.gz", "--mask-prompt", tmp_path / "other_spacing.nii.gz")
    assert_one_line_error(mismatched, "other_spacing.nii.gz vs", "spacing differs: [1.0, 1.0, 1.0] vs [0.9766, 0.9766, 5.0]")  # in the names' order

    # A video's PNG masks replace their folder: never one holding other files, nor the frames' own.
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        Image.fromarray(np.full((32, 40), 60 * index, np.uint8)).save(frames / f"f{index}.png")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("keep me")
    described = run("info", frames)
    assert described.exit_code == 0 and "kind: video" in described.stdout and "frames: 3" in described.stdout, described.output
    frame_box = ["--frame-box", "0,5,5,20,20"]
    assert_one_line_error(run("segment", frames, "-o", tmp_path / "results", *frame_box), "holds other files (notes.txt)")
    assert_one_line_error(run("segment", frames, "-o", frames, *frame_box), "would replace the input")
    # Nor does an output go among the frames (the --areas table and its plot, named like a frame).
    among = run("segment", frames, "-o", tmp_path / "masks.npz", "--areas", frames / "f1.csv", *frame_box)
    assert_one_line_error(among, f"in the input folder {frames}, among the images it holds")
    assert (tmp_path / "results" / "notes.txt").read_text() == "keep me" and len(list(frames.iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder", "frames", "other_spacing.nii.gz", "results"]


def test_a_dicom_seg_written_by_segment_prompts_the_next_run(tmp_path: Path, lesion_case: Path, write_dicom_series) -> None:
    """The DICOM-SEG round trip users make: segment a series to a SEG, then give that SEG back as a
    mask prompt (its frames are the series' non-empty slices, mapped by their source instances), or
    correct it with --edit; an object's name is its segment's label, and stays through the edit."""
    volume = load_image(lesion_case)
    write_dicom_series(volume, tmp_path / "series")
    truth = stored_array(volume, "gts") > 0
    key = int(np.argmax(truth.sum(axis=(1, 2))))
    x1, y1, x2, y2 = box_from_mask(truth[key])
    named = {"objects": [{"id": 1, "name": "liver lesion", "prompts": [{"slice": key, "box": [x1, y1, x2, y2]}]}]}
    (tmp_path / "prompts.json").write_text(json.dumps(named))
    first = run("segment", tmp_path / "series", "-o", tmp_path / "seg.dcm", "--prompts", tmp_path / "prompts.json")
    assert first.exit_code == 0, first.output
    # A SEG among the series' files replaced a slice (or joined the series): refused, the series untouched.
    slice_file = sorted((tmp_path / "series").iterdir())[0]
    before = slice_file.read_bytes()
    for inside in (slice_file, tmp_path / "series" / "seg.dcm"):
        assert_one_line_error(run("segment", tmp_path / "series", "-o", inside, "--prompts", tmp_path / "prompts.json"), "in the input folder")
    assert slice_file.read_bytes() == before and not (tmp_path / "series" / "seg.dcm").exists()
    assert [segment.SegmentLabel for segment in pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence] == ["liver lesion"]
    edited = run("segment", tmp_path / "series", "--edit", tmp_path / "seg.dcm", "--box", f"{key},{x1},{y1},{x2},{y2}", "-o", tmp_path / "edited.dcm")
    assert edited.exit_code == 0 and "object 1 (liver lesion):" in edited.stdout, edited.output
    assert [segment.SegmentLabel for segment in pydicom.dcmread(tmp_path / "edited.dcm").SegmentSequence] == ["liver lesion"]
    second = run("segment", tmp_path / "series", "-o", tmp_path / "again.nii.gz", "--mask-prompt", tmp_path / "seg.dcm")
    assert second.exit_code == 0, second.output
    series = load_image(tmp_path / "series")
    seg = load_mask(tmp_path / "seg.dcm", like=series).array > 0
    again = load_image(tmp_path / "again.nii.gz").array > 0
    assert dice(seg, truth) > 0.75 and dice(again, seg) > 0.85
    # eval reads a SEG against the series given with --image
    save_mask(stored_array(volume, "gts"), like=series, path=tmp_path / "truth.dcm")
    scored = run("eval", tmp_path / "seg.dcm", tmp_path / "truth.dcm", "--image", tmp_path / "series", "--json", tmp_path / "s.json")
    assert scored.exit_code == 0, scored.output
    [row] = json.loads((tmp_path / "s.json").read_text())["cases"]
    assert row["dice"] == pytest.approx(dice(seg, truth)) and row["gt_voxels"] == int(truth.sum())
    assert_one_line_error(run("eval", tmp_path / "seg.dcm", tmp_path / "truth.dcm"), "seg.dcm: a DICOM-SEG, read against the DICOM series it segments: give the series with --image SERIES")


def test_mask_prompt_npz_with_spacing_only_is_read_in_the_image_storage_order(tmp_path: Path, shared_data: Path) -> None:
    """A MedSAM-style mask npz (segs and spacing, no origin or direction) for a scan whose npz gives a
    non-identity direction: its slices are the image's as stored. It was rearranged from a default
    identity direction: refused on the real case (z flipped: 'origin differs', an origin the file
    never gave), and silently transposed on a square scan stored with x and y swapped."""
    case = shared_data / "ct_lesion" / "CT_Lesion_000015_01_01_081-093.npz"
    data = np.load(case)
    truth = (data["gts"] > 0).astype(np.uint8)
    key = 4
    one_slice = np.zeros_like(truth)
    one_slice[key] = truth[key]
    np.savez(tmp_path / "mask.npz", segs=one_slice, spacing=data["spacing"])
    out = tmp_path / "out.npz"
    result = run("segment", case, "--mask-prompt", tmp_path / "mask.npz", "-o", out)
    assert result.exit_code == 0, result.output
    segs = np.load(out)["segs"] > 0
    np.testing.assert_array_equal(segs[key], truth[key] > 0)  # a mask prompt is kept as given
    assert dice(segs, truth > 0) > 0.8

    swapped = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    np.savez(tmp_path / "square.npz", imgs=np.zeros((4, 30, 30), np.uint8), spacing=[1.0, 1.0, 2.0], origin=[0.0, 0.0, 0.0], direction=swapped)
    drawn = np.zeros((4, 30, 30), np.uint8)
    drawn[1, 2:5, 10:20] = 1
    np.savez(tmp_path / "drawn.npz", segs=drawn, spacing=[1.0, 1.0, 2.0])
    np.testing.assert_array_equal(load_mask(tmp_path / "drawn.npz", like=load_image(tmp_path / "square.npz")).array, drawn)


def test_eval_scores_a_result_against_a_ground_truth_npz_that_gives_only_spacing(tmp_path: Path, shared_data: Path) -> None:
    """`medsam2 eval` of segment's npz (spacing, origin, direction) against a MedSAM-style ground
    truth npz (segs and spacing): the same voxels, so Dice 1. It was refused with 'origin differs:
    [0.0, 0.0, 0.0] vs [0.0, 0.0, 60.0]', an origin neither file gave."""
    case = shared_data / "ct_lesion" / "CT_Lesion_000002_03_01_035-047.npz"
    data = np.load(case)
    truth = (data["gts"] > 0).astype(np.uint8)
    save_mask(truth, like=load_image(case), path=tmp_path / "pred.npz")
    np.savez(tmp_path / "gt.npz", segs=truth, spacing=data["spacing"])
    result = run("eval", tmp_path / "pred.npz", tmp_path / "gt.npz", "--json", tmp_path / "scores.json")
    assert result.exit_code == 0, result.output
    assert "1.0000" in result.stdout
    result = run("eval", tmp_path / "gt.npz", tmp_path / "pred.npz")
    assert result.exit_code == 0 and "1.0000" in result.stdout, result.output


def test_a_stop_signal_handled_in_a_weakref_callback_comes_again_after_it() -> None:
    """Python drops an exception raised in a weakref callback, and torch runs such callbacks as it
    frees tensors between operations: Ctrl-C or SIGTERM handled in one was lost and the command ran
    to its end. There the handler sends the signal again a moment later; elsewhere it stops at once."""
    frames = []

    class Key:
        pass

    def keep_weakref_frames(frame, event, _arg) -> None:
        if event == "call" and frame.f_code.co_filename.endswith("weakref.py"):
            frames.append(frame)

    table = weakref.WeakKeyDictionary()
    key = Key()
    table[key] = 1
    sys.setprofile(keep_weakref_frames)
    del key  # WeakKeyDictionary's removal callback runs, in weakref.py
    sys.setprofile(None)
    assert frames and len(table) == 0
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        stop_on_signal(signal.SIGTERM, frames[0])  # inside the callback: no exception to be dropped
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(SystemExit) as stopped:
        stop_on_signal(signal.SIGTERM, sys._getframe())
    assert stopped.value.code == 128 + signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        stop_on_signal(signal.SIGINT, None)
