"""An annotator's work with the real LiteMedSAM: the simulated annotator end to end on a real CT
lesion, and the `medsam2 annotate` commands on a small synthetic scan with a known object."""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import torch
import pytest
import SimpleITK as sitk
from sqlalchemy import select
from typer.testing import CliRunner

from medsam2.annotate import (
    CaseModel,
    Predictors,
    WorkSession,
    effort_report,
    import_cases,
    init_project,
    lease_next,
    open_project,
    read_snapshot,
)
from medsam2.annotate import db
from medsam2.annotate.schema import InteractionKind, InteractionRow
from medsam2.annotate.simulate import (
    Click,
    SimulationConfig,
    annotate_with_truth,
    next_click,
)
from medsam2.annotate.store import load_stored_mask
from medsam2.cli.main import app
from medsam2.errors import InputError
from medsam2.io import Volume, check_same_geometry, load_image, save_mask
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.training_set import read_manifest
from medsam2.models.weights import bundled_lite_medsam_checkpoint
from medsam2.metrics import dice
from medsam2.engine.api import prepare_slices
from medsam2.train.config import DataConfig, DataSource
from medsam2.train.data import discover_cases, load_case
from conftest import ctrl_c_as_in_a_terminal
from test_sam2_engine import random_sam2

runner = CliRunner()


def write_disc_case(path: Path, draw_recist) -> np.ndarray:
    """A 3-slice MedSAM npz: a bright disc of known extent in noise, a RECIST marker on slice 1;
    returns the disc's (Z, Y, X) truth."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:96, :96]
    truth = np.stack([(rows - 48) ** 2 + (cols - 44) ** 2 < radius**2 for radius in (14, 20, 17)])
    imgs = (40 + rng.normal(0, 8, truth.shape) + 140 * truth).clip(0, 255).astype(np.uint8)
    recist = np.zeros(truth.shape, dtype=np.uint8)
    recist[1] = draw_recist(truth[1])
    np.savez_compressed(path, imgs=imgs, recist=recist, spacing=np.array([0.7, 0.7, 3.0]))
    return truth


def run(*args) -> object:
    return runner.invoke(app, ["annotate", *[str(a) for a in args]])


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    # An error found after the case was rebuilt comes after that replay's progress bar.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("propagating")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def predictors() -> Predictors:
    """LiteMedSAM loaded once for this module's simulated annotators."""
    return Predictors()


def test_simulated_annotator_end_to_end_on_a_ct_lesion(tmp_path: Path, ct_lesion_cases, predictors: Predictors) -> None:
    project = init_project(tmp_path / "project")
    import_cases(project, [ct_lesion_cases[1]], progress=False)
    case = lease_next(project, "simulated")
    work = WorkSession(project, case.name, "simulated", predictors)
    truth = stored_array(work.model.volume, "gts")
    result = annotate_with_truth(work, truth)

    assert result.reached_target and result.final_dice >= 0.90, result.dice_after
    assert result.dice_after[0] < 0.90 and result.manual_slices == 7  # one box was not enough here
    (effort,) = effort_report(project).cases
    assert effort.state == "accepted" and effort.annotators == "simulated"
    assert effort.interactions == len(result.dice_after) == len(result.steps) == effort.prompts + effort.corrections
    assert effort.prompts == sum(result.count(kind) for kind in ("box", "click+", "click-"))
    assert 1 <= effort.slices_touched <= effort.interactions and effort.seconds >= 0
    (row,) = project.cases()
    accepted = load_mask(project.folder / row.mask)
    check_same_geometry(work.model.volume, accepted, "accepted mask vs image")
    assert dice(accepted.array, truth) == pytest.approx(result.final_dice)
    preseg = load_stored_mask(project.folder, row.preseg_mask, row.preseg_sha256)
    assert row.preseg_source == "first-prompt" and row.initial_dice == pytest.approx(dice(preseg, accepted.array))
    assert effort.manual_slices == row.mask_slices == int(accepted.array.reshape(accepted.array.shape[0], -1).any(axis=1).sum())
    assert row.model_version.startswith("lite-medsam@")
    # The record alone rebuilds the accepted mask: any process can go on from it.
    with project.transaction() as session:
        snapshot = read_snapshot(project, session, project.case(session, row.name))
    assert np.array_equal(CaseModel(project, snapshot, predictors).labels(), accepted.array)
    project.close()


@pytest.fixture(scope="module")
def random_sam2_model(tmp_path_factory) -> str:
    """`--model` for a random-weight SAM 2.1 hiera-tiny checkpoint with MedSAM2's settings."""
    path = tmp_path_factory.mktemp("model") / "random_sam2.pt"
    torch.manual_seed(0)
    torch.save({"model": random_sam2(64).state_dict()}, path)
    return f"medsam2={path}"


@pytest.mark.parametrize("family", ["lite-medsam", "sam2.1"])
def test_the_record_rebuilds_the_live_mask_after_a_click_on_a_propagated_slice(
    family: str, tmp_path: Path, ct_lesion_cases, random_sam2_model: str
) -> None:
    """A click where only propagation had left a mask: live, every prompt is followed by a
    propagation, and a SAM 2.1 model takes the mask propagated there with the clicks (as Meta's
    predictor does); rebuilt from the record (any process going on with the case, an undo), the case
    comes out the same."""
    arrays = dict(np.load(ct_lesion_cases[1]))  # five slices around the lesion's largest (6)
    np.savez(tmp_path / "five.npz", **{**arrays, "imgs": arrays["imgs"][4:9], "gts": arrays["gts"][4:9]})
    project = init_project(tmp_path / "project", model=random_sam2_model if family == "sam2.1" else "lite-medsam")
    import_cases(project, [tmp_path / "five.npz"], progress=False)
    case = lease_next(project, "bob")
    predictors = Predictors()
    work = WorkSession(project, case.name, "bob", predictors)
    work.add_prompt(2, 1, box=(246, 273, 276, 322))
    assert work.labels()[4].any()  # propagated there
    work.add_prompt(4, 1, points=[(262, 300)], labels=[1])
    with project.transaction() as session:
        snapshot = read_snapshot(project, session, project.case(session, case.name))
    np.testing.assert_array_equal(CaseModel(project, snapshot, predictors).labels(), work.labels())
    if family == "sam2.1":  # the round runs its file with the settings it was given (MedSAM2's), not as a bare file
        assert snapshot.round.model.startswith("medsam2=") and predictors.get(snapshot.round).model.image_size == 512
    # An empty edited mask is refused before any of its erasures is recorded.
    before = work.labels().copy()
    with pytest.raises(InputError, match="the mask is empty"):
        work.accept(np.zeros_like(before))
    np.testing.assert_array_equal(work.labels(), before)
    with project.transaction() as session:
        assert len(read_snapshot(project, session, project.case(session, case.name)).active) == 2
    project.close()


def test_clicks_land_at_the_centre_of_the_largest_error_region() -> None:
    wanted = np.zeros((40, 60), dtype=bool)
    wanted[10:30, 10:50] = True
    current = wanted.copy()
    current[12:27, 31:46] = False  # a 15x15 miss
    current[0:5, 0:6] = True  # a smaller spill in the corner
    assert next_click(current, wanted) == Click(38.0, 19.0, 1)  # deepest point of the miss, a positive click

    current = wanted.copy()
    current[:, 52:60] = True  # a spill along the image border: the border counts as the region's edge
    current[20, 20] = False  # a one-pixel miss
    click = next_click(current, wanted)
    assert click.label == 0 and click.x in (55.0, 56.0) and not wanted[int(click.y), int(click.x)]

    current = wanted.copy()
    current[10:14, 10:14] = False  # two misses: the click goes into the larger one
    current[20:28, 40:48] = False
    click = next_click(current, wanted)
    assert click.label == 1 and 40 <= click.x < 48 and 20 <= click.y < 28
    assert next_click(wanted, wanted) is None


def test_click_corrections_are_recorded_as_prompts_and_land_on_the_truth(tmp_path: Path, draw_recist, predictors: Predictors) -> None:
    scan = tmp_path / "disc.npz"
    truth = write_disc_case(scan, draw_recist)
    project = init_project(tmp_path / "project")
    import_cases(project, [scan], progress=False)
    case = lease_next(project, "simulated")
    work = WorkSession(project, case.name, "simulated", predictors)
    config = SimulationConfig(target_dice=0.999, max_corrections=2, clicks_per_slice=3)  # a box, then a click
    result = annotate_with_truth(work, truth, config)

    with project.transaction() as session:
        rows = list(session.scalars(select(InteractionRow).order_by(InteractionRow.id)))
    prompts = [r for r in rows if r.kind == InteractionKind.PROMPT.value]
    clicks = [r for r in prompts if "points" in r.data]
    assert result.count("click+") + result.count("click-") == len(clicks) >= 1
    assert result.count("box") == len(prompts) - len(clicks)
    for row in clicks:  # one click per interaction, inside the truth when positive, outside when negative
        ((x, y),), (label,) = row.data["points"], row.data["labels"]
        assert truth[row.slice_index, int(y), int(x)] == bool(label)
    (effort,) = effort_report(project).cases
    assert effort.interactions == len(result.steps)
    assert [(kind, index) for kind, index in result.steps if kind.startswith("click")] == [
        ("click+" if r.data["labels"] == [1] else "click-", r.slice_index) for r in clicks
    ]
    # The record alone, clicks included, replays to the accepted mask.
    (row,) = project.cases()
    with project.transaction() as session:
        snapshot = read_snapshot(project, session, project.case(session, row.name))
    assert np.array_equal(CaseModel(project, snapshot, predictors).labels(), load_stored_mask(project.folder, row.mask, row.mask_sha256))
    project.close()


def test_the_annotate_commands_from_hints_to_training_set(tmp_path: Path, draw_recist) -> None:
    scan = tmp_path / "disc.npz"
    truth = write_disc_case(scan, draw_recist)
    project = tmp_path / "lesion project (v1)"
    quoted = shlex.quote(str(project))
    refused = run("init", project, "--label", "1=lesion")
    assert refused.exit_code == 2 and "the folder's name cannot name the project" in refused.output and "--name" in refused.output
    created = run("init", project, "--name", "lesions", "--label", "1=lesion", "--lease-minutes", "20")
    # Each step of a round names the next (the commands said what they did, not what comes after),
    # paths quoted so that the line pastes into a shell.
    assert created.exit_code == 0 and created.stdout.splitlines()[-1] == f"next: medsam2 annotate import {quoted} SCANS... [--masks MASKS/]"
    imported = run("import", project, scan)
    assert imported.exit_code == 0 and "imported 1 case(s)" in imported.output
    assert imported.stdout.splitlines()[-1] == f"next: medsam2 annotate presegment {quoted} (the cases with hints), then medsam2 annotate queue {quoted} -a NAME"
    assert "1 already in the project" in run("import", project, scan).output
    (tmp_path / "copy").mkdir()
    shutil.copy(scan, tmp_path / "copy" / "disc_again.npz")
    copied = run("import", project, tmp_path / "copy")
    assert copied.exit_code == 0 and "imported 0 case(s)" in copied.output
    assert copied.stderr.strip().splitlines()[-1] == (
        "warning: not imported, the same image as a case already in the project (if the data moved: medsam2 annotate "
        f"relocate): {tmp_path / 'copy' / 'disc_again.npz'} (case disc)"
    )
    # A hint given again is not taken (the case keeps what it was imported with), and that is said.
    again = run("import", project, scan, "--recist", "0,30,34,58,62")
    assert again.exit_code == 0 and again.stderr.strip().splitlines()[-1] == (
        "warning: already in the project, so kept as imported (the masks and prompt hints given now are not used; "
        "prompt a case with `medsam2 annotate prompt`): disc"
    )
    assert re.search(r"│ -\s+│ none yet \(not pre-segmented or opened\)\s+│\s+│ 1\s+│", run("status", project).output)
    # The case names the other commands take.
    assert re.search(r"│ disc\s+│ new\s+│\s+│ /", run("status", project, "--cases").output)
    presegmented = run("presegment", project)
    assert presegmented.exit_code == 0 and "pre-segmented 1 case(s)" in presegmented.output, presegmented.output
    assert presegmented.stdout.splitlines()[-1] == f"next: medsam2 annotate queue {quoted} -a NAME (or, in a browser: medsam2 serve --annotate {quoted})"

    queued = run("queue", project, "-a", "alice")
    assert queued.exit_code == 0 and queued.output.startswith("disc: leased to alice"), queued.output
    assert run("queue", project, "-a", "bob").exit_code == 1  # nothing else is free
    (row,) = open_project(project).cases()
    before = load_stored_mask(open_project(project).folder, row.preseg_mask, row.preseg_sha256)
    assert row.state == "in_review" and row.preseg_source == "hints" and dice(before, truth) > 0.9

    box = "0,30,34,58,62"  # the disc's box on slice 0
    prompted = run("prompt", project, "disc", "--box", box, "-a", "alice", "-o", tmp_path / "after.nii.gz")
    assert prompted.exit_code == 0 and "recorded 1 prompt(s)" in prompted.output, prompted.output
    after = load_mask(tmp_path / "after.nii.gz").array
    assert not np.array_equal(after[0], before[0]) and np.array_equal(after[1:], before[1:])
    assert dice(after[0], truth[0]) > dice(before[0], truth[0])
    assert_one_line_error(run("prompt", project, "disc", "--box", box, "-a", "bob"), "leased to alice")
    # Objects are the project's declared labels: anything else is refused and nothing recorded,
    # before the case is rebuilt (no replay's progress bar).
    wrong_object = run("prompt", project, "disc", "--box", f"{box},2", "-a", "alice")
    assert_one_line_error(wrong_object, "label 2 is not one of the project's labels (1=lesion)")
    for bad_box, message in (("9,30,34,58,62", "slice out of range 0..2"), ("0,58,34,30,62", "is inverted or empty")):  # as are prompts that cannot fit
        refused = run("prompt", project, "disc", "--box", bad_box, "-a", "alice")
        assert_one_line_error(refused, message)
        assert "propagating" not in refused.stderr
    save_mask(np.where(after > 0, 7, 0), load_image(scan), tmp_path / "label7.nii.gz")
    wrong_label = run("correct", project, "disc", "-a", "alice", "--mask", tmp_path / "label7.nii.gz")
    assert_one_line_error(wrong_label, "label 7 is not one of")
    save_mask(after[:2], Volume(array=after[:2]), tmp_path / "short.nii.gz")
    wrong_shape = run("accept", project, "disc", "-a", "alice", "--mask", tmp_path / "short.nii.gz")
    assert_one_line_error(wrong_shape, "shape (Z, Y, X) differs")
    assert not any("propagating" in result.stderr for result in (wrong_object, wrong_label, wrong_shape))
    undone = run("undo", project, "disc", "-a", "alice", "-o", tmp_path / "undone.nii.gz", "--overlay", tmp_path / "undone.png")
    assert undone.exit_code == 0 and "undid a prompt on slice 0" in undone.output, undone.output
    assert np.array_equal(load_mask(tmp_path / "undone.nii.gz").array, before)
    assert (tmp_path / "undone.png").read_bytes()[:4] == b"\x89PNG"
    unchanged = run("correct", project, "disc", "-a", "alice", "--mask", tmp_path / "undone.nii.gz", "--slice", "1")
    assert unchanged.exit_code == 0 and "recorded 0 correction(s)" in unchanged.output, unchanged.output
    assert unchanged.stderr.strip().splitlines()[-1] == (
        f"warning: {tmp_path / 'undone.nii.gz'}, slice 1: the same as the case's current mask, nothing to record (another slice meant?)"
    )

    accepted = run("accept", project, "disc", "-a", "alice")
    assert accepted.exit_code == 0 and "accepted (3 slices, Dice vs pre-segmentation 1.000)" in accepted.output, accepted.output
    history = run("show", project, "disc").output.splitlines()
    assert [line.split(": ")[-1].split()[0] for line in history[1:]] == ["presegment", "lease", "prompt", "undo", "accept"]
    assert "undoes #" in history[4] and "alice" in history[3]
    assert history[3].endswith(": prompt slice 0 object 1; box 30,34,58,62"), history[3]  # as given to `prompt`

    status = run("status", project)
    assert status.exit_code == 0 and "accepted" in status.output and "lite-medsam@79d8c9dca6db" in status.output
    (tmp_path / "a_file").write_text("x")
    into_a_file = run("report", project, "--out", tmp_path / "a_file")
    assert_one_line_error(into_a_file, "a_file: cannot use as the output folder (a file is there)")
    assert into_a_file.stdout == ""  # said before the table, not after it
    report = run("report", project, "--out", tmp_path / "effort")
    assert report.exit_code == 0 and (tmp_path / "effort" / "effort.png").read_bytes()[:4] == b"\x89PNG"
    # a column per round, a row per measure, whole at 80 columns
    assert re.search(r"│ interactions per case\s+│ 2\.0\s+│\n│ manual slices per case │ 3\.0\s+│", report.stdout), report.stdout
    table = [line for line in report.stdout.splitlines() if not line.startswith("wrote ")]
    assert max(map(len, table)) <= 80 and "round 1" in table[1] and "…" not in report.stdout
    (case_effort,) = csv.DictReader((tmp_path / "effort" / "cases.csv").open())
    assert (case_effort["interactions"], case_effort["prompts"], case_effort["undos"], case_effort["manual_slices"]) == ("2", "1", "1", "3")
    assert run("round", project, "--model", "lite-medsam").output.startswith("round 2 started")

    exported = run("export", project, tmp_path / "trainset", "--format", "npz", "--no-progress")
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.splitlines()[-1] == (
        f"next: medsam2 train --data {tmp_path / 'trainset'} --out RUN/, then medsam2 annotate round {quoted} --model RUN/model.pt"
    )
    root, (case,) = read_manifest(tmp_path / "trainset")
    assert case.labels == {"1": "lesion"} and case.round == 1 and case.model.startswith("lite-medsam@")
    assert np.array_equal(load_mask(case.mask_path(root)).array, before)
    assert np.array_equal(load_image(case.image_path(root)).array, load_image(scan).array)


def test_commands_after_one_that_computed_the_case_reuse_its_result_unless_the_record_moved_on(
    tmp_path: Path, draw_recist, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`show -o`, `correct` and `accept` after `prompt` run no model: they take the model's mask the
    prompt kept for that very state of the record, and give the same masks as a replay. Once the
    record has moved on without a result kept (a prompt through the Python API), the case is replayed again."""
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)
    project = tmp_path / "project"
    for command in (("init", project, "--label", "1=lesion"), ("import", project, scan), ("queue", project, "-a", "alice")):
        assert run(*command).exit_code == 0
    prompted = run("prompt", project, "disc", "--box", "0,30,34,58,62", "-a", "alice", "-o", tmp_path / "after.nii.gz")
    assert prompted.exit_code == 0, prompted.output
    after = load_mask(tmp_path / "after.nii.gz").array
    models_built = []
    build = Predictors.get
    monkeypatch.setattr(Predictors, "get", lambda self, round_row: models_built.append(round_row.number) or build(self, round_row))

    assert run("show", project, "disc", "-o", tmp_path / "shown.nii.gz").exit_code == 0
    np.testing.assert_array_equal(load_mask(tmp_path / "shown.nii.gz").array, after)
    edited = after.copy()
    edited[2] = 0  # the last slice erased by hand
    save_mask(edited, load_image(scan), tmp_path / "edited.nii.gz")
    corrected = run("correct", project, "disc", "-a", "alice", "--mask", tmp_path / "edited.nii.gz", "-o", tmp_path / "corrected.nii.gz")
    assert corrected.exit_code == 0 and "recorded 1 correction(s)" in corrected.output, corrected.output
    np.testing.assert_array_equal(load_mask(tmp_path / "corrected.nii.gz").array, edited)
    assert models_built == []

    opened = open_project(project)
    WorkSession(opened, "disc", "alice", Predictors()).add_prompt(1, 1, points=[(44, 48)], labels=[1])  # kept nothing
    assert models_built == [1]
    with opened.transaction() as session:
        snapshot = read_snapshot(opened, session, opened.case(session, "disc"))
    replayed = CaseModel(opened, snapshot, Predictors()).labels()
    assert models_built == [1, 1]
    accepted = run("accept", project, "disc", "-a", "alice")
    assert accepted.exit_code == 0, accepted.output
    assert models_built == [1, 1, 1]  # the record had moved on: replayed
    (row,) = open_project(project).cases()
    np.testing.assert_array_equal(load_stored_mask(opened.folder, row.mask, row.mask_sha256), replayed)


def test_a_presegmented_dicom_case_opens_without_the_model_and_outputs_are_checked_before_recording(
    tmp_path: Path, draw_recist, write_dicom_series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`presegment` keeps the model's mask as `prompt` does (the first to open the case waited for
    the model again); a DICOM case's SEG names its segments as the project's labels (was "label 1");
    an output its format cannot hold fails before the prompt or undo is recorded (was after: a rerun
    with a better name recorded it twice)."""
    write_disc_case(tmp_path / "disc.npz", draw_recist)
    disc = load_image(tmp_path / "disc.npz")
    series_files = write_dicom_series(Volume(disc.array.astype(np.int32), spacing=disc.spacing), tmp_path / "series")
    project = tmp_path / "project"
    for command in (("init", project, "--label", "1=lesion"), ("import", project, tmp_path / "series", "--box", "1,22,26,66,70")):
        assert run(*command).exit_code == 0
    assert run("presegment", project).exit_code == 0
    models_built = []
    build = Predictors.get
    monkeypatch.setattr(Predictors, "get", lambda self, round_row: models_built.append(round_row.number) or build(self, round_row))
    queued = run("queue", project, "-a", "alice", "-o", tmp_path / "current.dcm")
    assert queued.exit_code == 0 and models_built == [], queued.output
    assert [segment.SegmentLabel for segment in pydicom.dcmread(tmp_path / "current.dcm").SegmentSequence] == ["lesion"]

    def interactions() -> list[str]:
        return re.findall(r"alice: (\w+)", run("show", project, "series").stdout)

    recorded = interactions()
    for action in (("prompt", project, "series", "--box", "1,22,26,66,70"), ("undo", project, "series")):
        refused = run(*action, "-a", "alice", "-o", tmp_path / "current.png")
        assert_one_line_error(refused, "current.png: PNG holds one 2D slice")
        assert interactions() == recorded, action

    assert run("accept", project, "series", "-a", "alice").exit_code == 0
    # a series that lost a file after its case was accepted: the export names the case
    sorted(series_files)[1].unlink()
    exported = run("export", project, tmp_path / "exported")
    assert exported.exit_code == 2 and not (tmp_path / "exported").exists()
    (said,) = [line for line in exported.stderr.splitlines() if "error" in line]  # on a line of its own, not after the bar
    assert said.startswith("error: ") and said.endswith("series: not the image case series was imported from (shape (2, 96, 96), was (3, 96, 96))")

    # a PACS export's layout (patient/series folders) given one level too high: the error says where the series are
    shutil.copytree(tmp_path / "series", tmp_path / "export" / "patient" / "CT")
    deep = run("import", project, tmp_path / "export")
    assert_one_line_error(deep, f"no images in this folder; DICOM series lie deeper, e.g. {tmp_path / 'export' / 'patient' / 'CT'}")

    for file in (tmp_path / "series").iterdir():  # no longer readable at all: the reader's line gets the case's name
        file.write_bytes(b"not DICOM")
    unreadable = run("export", project, tmp_path / "exported")
    assert unreadable.exit_code == 2 and f"error: case series: {tmp_path / 'series'}: " in unreadable.stderr, unreadable.output


def test_a_nifti_export_of_a_dicom_ct_is_trained_on_as_the_project_saw_it(tmp_path: Path, ct_lesion_cases: list[Path], write_dicom_series) -> None:
    """The manifest keeps a DICOM case's modality, which its NIfTI copy cannot hold, and the
    project's window: training read a CT whose view holds no air (cropped to the body, values all
    above -500 HU) as an image of unknown kind, scaled by percentiles, not through the CT window the
    project's model saw it with."""
    scan = load_image(ct_lesion_cases[1])
    truth = stored_array(scan, "gts")
    # The npz holds 0-255 values (windowed); as HU, -100 to 410: soft tissue and bone, no air.
    body = Volume(scan.array.astype(np.int32) * 2 - 100, scan.spacing, scan.origin, scan.direction)
    write_dicom_series(body, tmp_path / "series")
    save_mask(truth, load_image(tmp_path / "series"), tmp_path / "series_mask.nii.gz")
    project = tmp_path / "project"
    for command in (
        ("init", project, "--label", "1=lesion", "--window", "bone"),
        ("import", project, tmp_path / "series", "--masks", tmp_path / "series_mask.nii.gz"),
        ("queue", project, "-a", "alice"),
        ("accept", project, "series", "-a", "alice"),
        ("export", project, tmp_path / "exported", "--no-progress"),
    ):
        result = run(*command)
        assert result.exit_code == 0, (command, result.output)
    root, (exported,) = read_manifest(tmp_path / "exported")
    assert (exported.modality, exported.window) == ("CT", "bone")
    (from_export,) = discover_cases((DataSource(manifest=str(tmp_path / "exported")),))
    as_trained = load_case(from_export, DataConfig(), context=None).slices
    np.testing.assert_array_equal(as_trained, prepare_slices(load_image(tmp_path / "series"), "axial", "bone")[0])
    assert not np.array_equal(as_trained, prepare_slices(load_image(tmp_path / "series"), "axial", None)[0])
    assert not np.array_equal(as_trained, prepare_slices(load_image(exported.image_path(root)), "axial", None)[0])
    # A window in the training config is the one used.
    np.testing.assert_array_equal(
        load_case(from_export, DataConfig(window="lung"), context=None).slices, prepare_slices(load_image(tmp_path / "series"), "axial", "lung")[0]
    )


def test_a_pacs_export_is_imported_recursively_with_cases_named_after_their_paths(tmp_path: Path, write_dicom_series) -> None:
    """A PACS export (a DICOMDIR beside PATIENT/STUDY/SERIES folders whose series are all called CT):
    named after the series folder alone the cases clash, and the line says what to do; --recursive
    takes every series below the folder, named after its path, and a mask named so."""
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    rng = np.random.default_rng(3)
    for patient in ("P1", "P2"):
        write_dicom_series(Volume(rng.integers(-100, 100, (3, 24, 24)).astype(np.int32), spacing=(0.7, 0.7, 2.0)), export / patient / "STUDY" / "CT")
    second = load_image(export / "P2" / "STUDY" / "CT")
    save_mask((second.array > 0).astype(np.uint8), second, tmp_path / "P2_STUDY_CT.nii.gz")
    project = tmp_path / "project"
    assert run("init", project).exit_code == 0
    assert_one_line_error(run("import", project, export), "DICOM series lie deeper, e.g. ")
    clash = run("import", project, export / "P1" / "STUDY" / "CT", export / "P2" / "STUDY" / "CT")
    assert_one_line_error(clash, "case name 'CT' is also that of ")
    assert "import a folder holding both with --recursive" in clash.stderr
    imported = run("import", project, export, "--recursive", "--masks", tmp_path, "--no-progress")
    assert imported.exit_code == 0 and imported.stdout.startswith("imported 2 case(s)"), imported.output
    assert "no mask in" in imported.stderr and "P1_STUDY_CT" in imported.stderr  # P2's mask was found
    cases = {row.name: row for row in open_project(project).cases()}
    assert sorted(cases) == ["P1_STUDY_CT", "P2_STUDY_CT"]
    assert cases["P2_STUDY_CT"].state == "presegmented" and cases["P1_STUDY_CT"].state == "new"
    assert cases["P1_STUDY_CT"].image == str(export / "P1" / "STUDY" / "CT")
    assert run("import", project, export, "-r").stdout.startswith("imported 0 case(s), 2 already in the project")


def test_an_undone_prompt_leaves_the_case_as_a_replay_of_its_record(tmp_path: Path, ct_lesion_cases, predictors: Predictors) -> None:
    """Undoing the latest of two clicks on a slice leaves the case as any process rebuilding it from
    the record sees it (taken out of the live session instead, the click left was given without the
    propagation a replay runs first: 115 voxels differed on this case), and that is what is accepted."""
    project = init_project(tmp_path / "project")
    import_cases(project, [ct_lesion_cases[1]], progress=False)
    case = lease_next(project, "alice")
    work = WorkSession(project, case.name, "alice", predictors)
    work.add_prompt(6, 1, box=(246, 273, 276, 322))
    work.add_prompt(8, 1, points=[(259, 291)], labels=[1])
    work.add_prompt(8, 1, points=[(262, 300)], labels=[1])
    work.undo()
    with project.transaction() as session:
        snapshot = read_snapshot(project, session, project.case(session, case.name))
    replayed = CaseModel(project, snapshot, predictors).labels()
    np.testing.assert_array_equal(work.labels(), replayed)
    row = work.accept()
    np.testing.assert_array_equal(load_stored_mask(project.folder, row.mask, row.mask_sha256), replayed)
    project.close()


def test_a_kept_result_is_never_taken_for_another_project_or_read_from_a_damaged_file(tmp_path: Path, draw_recist) -> None:
    """A project made anew in the same folder starts its ids again: the result kept for its
    predecessor's case 1 is not its case 1's. A kept file left empty by a crash, or a file in the
    place of the results folder, only costs a replay."""
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)  # its RECIST marker: a hint the model segments the disc from
    project = tmp_path / "project"
    for command in (("init", project, "--label", "1=lesion"), ("import", project, scan)):
        assert run(*command).exit_code == 0
    assert "object 1: slices" in run("show", project, "disc", "-o", tmp_path / "hinted.nii.gz").output
    assert (project / "results" / "case-1.npz").is_file()
    (project / "project.db").unlink()
    (project / "medsam2-project.json").unlink()
    unmarked = tmp_path / "unmarked.npz"
    np.savez(unmarked, **{key: value for key, value in np.load(scan).items() if key != "recist"})
    for command in (("init", project, "--label", "1=lesion"), ("import", project, unmarked)):
        assert run(*command).exit_code == 0
    shown = run("show", project, "unmarked", "-o", tmp_path / "new.nii.gz")
    assert shown.exit_code == 0 and "empty mask" in shown.output, shown.output

    replay = run("show", project, "unmarked", "-o", tmp_path / "replay.nii.gz")
    (project / "results" / "case-1.npz").write_bytes(b"")
    emptied = run("show", project, "unmarked", "-o", tmp_path / "emptied.nii.gz")
    shutil.rmtree(project / "results")
    (project / "results").write_text("notes")
    in_the_way = run("show", project, "unmarked", "-o", tmp_path / "in_the_way.nii.gz")
    for result, name in ((replay, "replay"), (emptied, "emptied"), (in_the_way, "in_the_way")):
        assert result.exit_code == 0, (name, result.output)
        np.testing.assert_array_equal(load_mask(tmp_path / f"{name}.nii.gz").array, load_mask(tmp_path / "new.nii.gz").array)


def test_presegment_exits_non_zero_when_a_case_fails(tmp_path: Path, draw_recist) -> None:
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)
    project = tmp_path / "project"
    assert run("init", project, "--label", "1=lesion").exit_code == 0
    assert run("import", project, scan).exit_code == 0
    original = dict(np.load(scan))
    for imgs in (np.zeros((2, 96, 96), np.uint8), original["imgs"] // 2):  # the scan changed after its import
        np.savez_compressed(scan, **{**original, "imgs": imgs})
        result = run("presegment", project)
        assert result.exit_code == 1 and "pre-segmented 0 case(s)" in result.stdout
        assert "not pre-segmented: disc: " in result.stderr and "not the image case disc was imported from" in result.stderr
    assert "(its voxels differ)" in result.stderr  # the same shape, other values


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_presegment_stopped_mid_case_gives_its_claim_back(tmp_path: Path, draw_recist, stop) -> None:
    """Ctrl-C (or a scheduler's SIGTERM) while the model runs: the case is not left leased to the dead
    process, where the rerun passed it over ("pre-segmented 0 case(s)") for the lease's 30 minutes."""
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)
    # 30 slices, not 3: the model then runs for seconds after the claim, so the stop lands mid-case
    # even on a loaded machine (the claim seen by a slow poll could be of a case already done: exit 0).
    with np.load(scan) as disc:
        tall = {key: np.concatenate([disc[key]] + [np.zeros_like(disc[key]) if key == "recist" else disc[key]] * 9) for key in ("imgs", "recist")}
        np.savez_compressed(scan, spacing=disc["spacing"], **tall)
    project = tmp_path / "project"
    assert run("init", project, "--label", "1=lesion").exit_code == 0
    assert run("import", project, scan).exit_code == 0
    command = [sys.executable, "-m", "medsam2.cli", "annotate", "presegment", str(project)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not (open_project(project).cases()[0].lease_owner or "").startswith("presegment@"):
        assert process.poll() is None and time.monotonic() < deadline, "the case was never claimed"
        time.sleep(0.02)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0, (out, err)
    [case] = open_project(project).cases()
    assert (case.state, case.lease_owner, case.lease_expires) == ("new", None, None)
    rerun = run("presegment", project)
    assert rerun.exit_code == 0 and "pre-segmented 1 case(s)" in rerun.stdout


def test_a_case_presegment_failed_on_is_presegmented_by_the_round_started_since(tmp_path: Path, draw_recist) -> None:
    """A failed (or stopped) pre-segmentation leaves the case in no round: after `round --model`, the
    next presegment uses the new round's model and the report credits that round, not round 1."""
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)
    project = tmp_path / "project"
    assert run("init", project, "--label", "1=lesion").exit_code == 0
    assert run("import", project, scan).exit_code == 0
    original = scan.read_bytes()
    np.savez_compressed(scan, **{**dict(np.load(scan)), "imgs": np.zeros((3, 96, 96), np.uint8)})
    assert run("presegment", project).exit_code == 1  # the scan changed since its import
    scan.write_bytes(original)
    checkpoint = shutil.copy(bundled_lite_medsam_checkpoint(), tmp_path / "finetuned.pth")
    assert run("round", project, "--model", checkpoint).exit_code == 0
    assert run("presegment", project).exit_code == 0
    [case] = open_project(project).cases()
    assert case.state == "presegmented" and case.model_version.startswith(f"{tmp_path.name}/finetuned.pth@")
    assert [(row.number, row.cases) for row in open_project(project).status().rounds] == [(1, 0), (2, 1)]


def test_a_case_given_back_before_any_model_mask_is_segmented_by_the_round_started_since(tmp_path: Path, draw_recist) -> None:
    """A case leased in round 1 and given back before the model made any mask of it (released, or
    passed over because its image was missing then) is not round 1's: after `round --model`, it is
    pre-segmented by the new round's model and the report credits that round."""
    scan = tmp_path / "disc.npz"
    write_disc_case(scan, draw_recist)
    project = tmp_path / "project"
    assert run("init", project, "--label", "1=lesion").exit_code == 0
    assert run("import", project, scan).exit_code == 0
    assert run("queue", project, "-a", "alice").exit_code == 0  # no -o: the model does not run
    assert run("release", project, "disc", "-a", "alice").exit_code == 0
    checkpoint = shutil.copy(bundled_lite_medsam_checkpoint(), tmp_path / "finetuned.pth")
    assert run("round", project, "--model", checkpoint).exit_code == 0
    assert run("presegment", project).exit_code == 0
    [case] = open_project(project).cases()
    assert case.state == "presegmented" and case.model_version.startswith(f"{tmp_path.name}/finetuned.pth@"), case.model_version
    assert [(row.number, row.cases) for row in open_project(project).status().rounds] == [(1, 0), (2, 1)]


def test_relocate_points_a_project_at_moved_images_and_checkpoints(tmp_path: Path, draw_recist) -> None:
    """The record keeps absolute paths: after the data moved, `relocate` points the project at the
    new place, once every file there is checked to be the one recorded; otherwise nothing changes."""
    old = tmp_path / "share"
    old.mkdir()
    write_disc_case(old / "disc.npz", draw_recist)
    checkpoint = shutil.copy(bundled_lite_medsam_checkpoint(), old / "finetuned.pth")
    project = tmp_path / "project"
    assert run("init", project, "--label", "1=lesion").exit_code == 0
    assert run("import", project, old / "disc.npz").exit_code == 0
    assert run("round", project, "--model", checkpoint).exit_code == 0
    new = Path(shutil.copytree(old, tmp_path / "data"))
    shutil.rmtree(old)
    not_there = run("presegment", project)
    assert not_there.exit_code == 1 and "the image of case disc is not there (if the data moved" in not_there.stderr

    def variant(name: str, change) -> Path:
        folder = Path(shutil.copytree(new, tmp_path / name))
        change(folder)
        return folder

    def other_voxels(folder: Path) -> None:
        original = dict(np.load(folder / "disc.npz"))
        np.savez_compressed(folder / "disc.npz", **{**original, "imgs": 255 - original["imgs"]})

    def other_checkpoint(folder: Path) -> None:
        with open(folder / "finetuned.pth", "ab") as handle:
            handle.write(b"\0")

    for folder, fragment in [
        (variant("other_image", other_voxels), "disc.npz: not the image case disc was imported from (its voxels differ)"),
        (variant("other_checkpoint", other_checkpoint), "finetuned.pth: not the checkpoint round 2 began with (its SHA-256 differs)"),
        (tmp_path / "nowhere", "nowhere: no such folder"),
    ]:
        assert_one_line_error(run("relocate", project, old, folder, "--no-progress"), fragment)
    dry = run("relocate", project, old, new, "--dry-run", "--no-progress")
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [
        f"disc: {old / 'disc.npz'} -> {new / 'disc.npz'}",
        f"round 2: {old / 'finetuned.pth'} -> {new / 'finetuned.pth'}",
        "would relocate 1 case image(s) and 1 round checkpoint(s) (dry run: nothing changed)",
    ]
    assert "is not there" in run("presegment", project).stderr  # the dry run changed nothing
    # A case that cannot be opened is given back, not left leased to whoever took it.
    taken = run("queue", project, "-a", "alice", "-o", tmp_path / "current.nii.gz")
    assert_one_line_error(taken, "case disc cannot be opened (")
    assert "it was given back" in taken.stderr and "annotate relocate" in taken.stderr
    assert [row.lease_owner for row in open_project(project).cases()] == [None]

    # One file first (through a symbolic link to its folder), then the rest of the folder.
    (tmp_path / "link").symlink_to(new)
    one = run("relocate", project, old / "disc.npz", tmp_path / "link" / "disc.npz", "--no-progress")
    assert one.exit_code == 0 and one.output.endswith("relocated 1 case image(s) and 0 round checkpoint(s)\n"), one.output
    assert [row.image for row in open_project(project).cases()] == [str(new / "disc.npz")]  # as an import records it
    assert "the checkpoint of round 2 is not there (if it moved" in run("presegment", project).stderr
    moved = run("relocate", project, old, tmp_path / "link", "--no-progress")
    assert moved.exit_code == 0 and moved.output.endswith("relocated 0 case image(s) and 1 round checkpoint(s)\n"), moved.output
    assert "1 already in the project" in run("import", project, new).output  # the same case, known by its path
    presegmented = run("presegment", project)  # with round 2's checkpoint, from its new place
    assert presegmented.exit_code == 0 and "pre-segmented 1 case(s)" in presegmented.output, presegmented.output
    assert_one_line_error(run("relocate", project, old, new, "--no-progress"), "no case image or round checkpoint of the project is recorded under this folder")


def test_the_queue_passes_over_a_case_whose_image_changed(tmp_path: Path) -> None:
    """A plain `queue` (no mask written) still opens the image it hands out: a case whose voxels
    changed since import is given back, named, and the next case leased; alone in the queue, it is
    an error, and it can be rejected."""
    rng = np.random.default_rng(1)
    for name in ("first", "second"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 200, (3, 32, 32)).astype(np.int16)), str(tmp_path / f"{name}.nii.gz"))
    project = tmp_path / "project"
    assert run("init", project).exit_code == 0
    assert run("import", project, tmp_path / "first.nii.gz", tmp_path / "second.nii.gz").exit_code == 0
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 32, 32), np.int16)), str(tmp_path / "first.nii.gz"))

    queued = run("queue", project, "-a", "alice")
    assert queued.exit_code == 0 and queued.stdout.startswith("second: leased to alice"), queued.output
    assert queued.stderr.strip() == (
        "warning: passed over case first cannot be opened (first.nii.gz: not the image case first was imported from "
        "(its voxels differ)); it was given back: restore its file or reject it (medsam2 annotate reject PROJECT first --reason ...)"
    ).replace("first.nii.gz:", f"{tmp_path / 'first.nii.gz'}:")
    assert_one_line_error(run("queue", project, "-a", "bob"), "case first cannot be opened (")
    assert {row.name: (row.state, row.lease_owner) for row in open_project(project).cases()} == {
        "first": ("new", None),
        "second": ("in_review", "alice"),
    }
    assert run("reject", project, "first", "-a", "bob", "--reason", "rescanned").exit_code == 0
    assert run("queue", project, "-a", "bob").exit_code == 1  # nothing free, and nothing passed over


def test_a_case_whose_header_was_rewritten_is_refused_where_it_is_opened(tmp_path: Path) -> None:
    """The voxels untouched but the spacing rewritten after import: the masks drawn so far would be
    placed elsewhere, so the case is refused when leased and when relocated, naming what changed
    (export alone noticed it before)."""
    image = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 200, (3, 32, 32)).astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    project = tmp_path / "project"
    assert run("init", project).exit_code == 0
    assert run("import", project, tmp_path / "scan.nii.gz").exit_code == 0
    image.SetSpacing((0.8, 0.8, 5.0))
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    changed = "the image of case scan was placed otherwise when it was imported (then vs now): spacing differs: [0.8, 0.8, 2.5] vs [0.8, 0.8, 5.0]"
    assert_one_line_error(run("queue", project, "-a", "alice", "-o", tmp_path / "current.nii.gz"), changed)
    assert [row.lease_owner for row in open_project(project).cases()] == [None]
    moved = Path(shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}_moved", ignore=shutil.ignore_patterns("project")))
    assert_one_line_error(run("relocate", project, tmp_path, moved, "--no-progress"), changed)
    image.SetSpacing((0.8, 0.8, 2.5))  # restored: the case opens again
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    assert run("queue", project, "-a", "alice", "-o", tmp_path / "current.nii.gz").exit_code == 0


def test_an_empty_annotator_name_is_refused_not_taken_for_the_login(tmp_path: Path) -> None:
    """`-a "$NAME"` with NAME unset: the case is not leased under the login's name (shared by
    everyone on that account, who would then hold the same lease); the name is refused."""
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(3 * 32 * 32, dtype=np.int16).reshape(3, 32, 32)), str(tmp_path / "scan.nii.gz"))
    project = tmp_path / "project"
    assert run("init", project).exit_code == 0
    assert run("import", project, tmp_path / "scan.nii.gz").exit_code == 0
    assert_one_line_error(run("queue", project, "-a", ""), "annotator '': use letters, digits")
    assert [(row.state, row.lease_owner) for row in open_project(project).cases()] == [("new", None)]
    queued = run("queue", project, "-a", "alice")
    assert queued.exit_code == 0 and queued.stdout.startswith("scan: leased to alice"), queued.output


def test_annotate_commands_reject_bad_input(tmp_path: Path) -> None:
    project = tmp_path / "project"
    assert_one_line_error(run("status", project), "not an annotation project")
    assert_one_line_error(run("init", project, "--label", "lesion"), "--label 'lesion': expected VALUE=NAME")
    assert_one_line_error(run("init", project, "--label", "70000=lesion"), "VALUE a whole number from 1 to 65535")
    assert_one_line_error(run("init", project, "--label", "1=liver", "--label", "1=lesion"), "--label '1=lesion': label 1 is already named 'liver'")
    assert_one_line_error(run("init", project, "--axis", "oblique"), "--axis 'oblique'")
    # A lease of no whole second would have run out when taken; inf or a lease past the calendar
    # cannot be stored or computed (a traceback at init, or at every queue of the project made).
    for minutes in ("0.001", "inf", "1e12", "nan", "0"):
        assert_one_line_error(run("init", project, "--lease-minutes", minutes), f"--lease-minutes {float(minutes)}: must be from 0.0167 (one second) to 525600 (a year)")
        assert not project.exists()
    assert_one_line_error(run("init", project, "--db", "oracle://x/y"), "unsupported database 'oracle'")
    (tmp_path / "notes.txt").write_text("a file")
    assert_one_line_error(run("init", tmp_path / "notes.txt"), "notes.txt: a file is there; a project is a folder")
    assert run("init", project).exit_code == 0
    assert_one_line_error(run("init", project), "already an annotation project")
    assert_one_line_error(run("import", project, tmp_path / "nothing.nii.gz"), "no such file or folder")
    assert_one_line_error(run("accept", project, "ghost", "-a", "alice"), "no case named 'ghost'")
    assert_one_line_error(run("export", project, tmp_path / "out"), "no accepted cases")
    assert_one_line_error(run("queue", project, "-a", "two words"), "annotator 'two words'")
    # A round's model is built when the round starts, not when the first case needs it.
    torch.save({"a": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert_one_line_error(run("round", project, "--model", tmp_path / "foreign.pt"), "neither a LiteMedSAM nor a SAM 2.1 / MedSAM2 checkpoint")
    # output names are checked before the case is looked up (and before any replay or recording)
    assert_one_line_error(run("show", project, "ghost", "-o", tmp_path / "out" / "mask.xyz"), "cannot write masks as '.xyz'")
    assert_one_line_error(run("prompt", project, "ghost", "--box", "0,1,1,5,5", "--overlay", tmp_path / "out" / "view.jpg"), "name it .png")
    assert not (tmp_path / "out").exists()


def test_a_command_waiting_for_the_locked_database_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another command writing the SQLite database holds its lock: a command waiting for it says
    so once, then goes on when the lock is let go, or fails in one line when it is not in time."""
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(3 * 32 * 32, dtype=np.int16).reshape(3, 32, 32)), str(tmp_path / "scan.nii.gz"))
    project = tmp_path / "project"
    assert run("init", project).exit_code == 0 and run("import", project, tmp_path / "scan.nii.gz").exit_code == 0
    monkeypatch.setattr(db, "WAIT_NOTICE_SECONDS", 0.5)
    monkeypatch.setattr(db, "SQLITE_BUSY_SECONDS", 3)

    def locked_for(seconds: float) -> threading.Timer:
        other = sqlite3.connect(project / "project.db", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        freed = threading.Timer(seconds, lambda: (other.commit(), other.close()))
        freed.start()
        return freed

    waiting = "waiting for the project database sqlite:///"
    freed = locked_for(1.5)
    queued = run("queue", project, "-a", "alice")
    freed.join()
    assert queued.exit_code == 0 and queued.stdout.startswith("scan: leased to alice"), queued.output
    assert queued.stderr.count(waiting) == 1, queued.stderr
    assert "which another medsam2 command (or the web server) is writing (for at most 3 s)" in queued.stderr
    freed = locked_for(5)
    given_up = run("release", project, "scan", "-a", "alice")
    freed.join()
    notice, error = given_up.stderr.splitlines()  # the notice, then the one-line error
    assert given_up.exit_code == 2 and notice.startswith(waiting), given_up.output
    assert error.startswith("error: sqlite:///") and error.endswith("project.db: database is locked"), error
    assert [(row.state, row.lease_owner) for row in open_project(project).cases()] == [("in_review", "alice")]


def test_the_queue_says_a_case_comes_with_work_another_annotator_left(tmp_path: Path) -> None:
    scan = sitk.GetImageFromArray(np.arange(3 * 32 * 32, dtype=np.int16).reshape(3, 32, 32))
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    drawn = np.zeros((3, 32, 32), dtype=np.uint8)
    drawn[0, 8:20, 8:20] = 1
    save_mask(drawn, like=load_image(tmp_path / "scan.nii.gz"), path=tmp_path / "drawn.nii.gz")
    project = tmp_path / "project"
    assert run("init", project, "--lease-minutes", "0.02").exit_code == 0
    assert run("import", project, tmp_path / "scan.nii.gz").exit_code == 0
    assert "left by" not in run("queue", project, "-a", "alice").stdout
    corrected = run("correct", project, "scan", "-a", "alice", "--mask", tmp_path / "drawn.nii.gz", "--slice", "0")
    assert corrected.exit_code == 0, corrected.output
    time.sleep(1.5)  # alice's lease runs out
    queued = run("queue", project, "-a", "bob")
    assert queued.exit_code == 0 and queued.stdout.splitlines()[1] == (
        "scan: left by alice with 1 earlier correction, which this continues from"
    ), queued.output
