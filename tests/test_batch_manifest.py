"""Batch manifests and the `medsam2 batch` command's refusals: no model runs here."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medsam2.cli import batch as batch_cli
from medsam2.cli.main import app, stop_on_signal
from medsam2.distributed import BatchSettings, read_manifest
from medsam2.distributed.manifest import Case
from medsam2.distributed.results import ResultsStore, fingerprints
from medsam2.distributed import ray_engine
from medsam2.distributed.runner import StoppedAtOnce, run_batch, stop_requests
from medsam2.distributed import worker
from medsam2.distributed.worker import CaseRunner, mask_suffix
from medsam2.engine.prompt_sources import PromptSources
from medsam2.engine.registry import pinned_spec, resolve_model
from medsam2.errors import InputError
from medsam2.resources import packaged_file

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_csv_and_jsonl_manifests_describe_the_same_cases(tmp_path: Path) -> None:
    csv_manifest = write(
        tmp_path / "lists" / "cases.csv",
        "id,image,box,point,recist,prompts,gt,model,format\n"
        'a,../scans/a.nii.gz,"3,10,10,40,40;5,12,12,38,38,2","4,20,20,0",,a.json,../labels/a.nii.gz,,npz\n'
        "b.2,/data/b.nrrd,,,\"7,1,2,30,40\",,,lite-medsam,\n",
    )
    jsonl_manifest = write(
        tmp_path / "lists" / "cases.jsonl",
        json.dumps({"id": "a", "image": "../scans/a.nii.gz", "box": [[3, 10, 10, 40, 40], "5,12,12,38,38,2"],
                    "point": [4, 20, 20, 0], "prompts": "a.json", "gt": "../labels/a.nii.gz", "format": "npz"})
        + "\n\n"
        + json.dumps({"ID": "b.2", "Image": "/data/b.nrrd", "recist": "7,1,2,30,40", "model": "lite-medsam"})  # names as in a CSV header: any case
        + "\n",
    )
    from_csv, from_jsonl = read_manifest(csv_manifest), read_manifest(jsonl_manifest)
    first = from_csv[0]
    assert first.image == (tmp_path / "scans" / "a.nii.gz").resolve()
    assert first.gt == (tmp_path / "labels" / "a.nii.gz").resolve()
    assert first.prompts == PromptSources(
        boxes=("3,10,10,40,40", "5,12,12,38,38,2"),
        points=("4,20,20,0",),
        prompts_file=(tmp_path / "lists" / "a.json").resolve(),
    )
    assert (first.output_format, first.model) == ("npz", None)
    assert from_csv[1].prompts == PromptSources(recists=("7,1,2,30,40",))
    assert from_csv[1].model == "lite-medsam" and from_csv[1].gt is None
    settings = BatchSettings(out_dir=tmp_path / "out")
    # Same content, different files and lines: the same fingerprints, so either resumes the other.
    assert fingerprints(from_csv, settings) == fingerprints(from_jsonl, settings)
    assert fingerprints([first], settings) != fingerprints([first], BatchSettings(out_dir=tmp_path, keep_largest=True))
    # JSON's true is no coordinate (Python counts it an int): the error shows the row as written.
    boolean = write(tmp_path / "bool.jsonl", json.dumps({"id": "c", "image": "c.nii.gz", "box": [True, 246, 273, 276, 322]}) + "\n")
    with pytest.raises(InputError, match=re.escape("got [true, 246, 273, 276, 322]")):
        read_manifest(boolean)
    # Editing the prompts file the row names counts as editing the row.
    before = fingerprints([first], settings)
    write(tmp_path / "lists" / "a.json", '{"objects": []}')
    assert fingerprints([first], settings) != before


def test_a_rows_checkpoint_is_found_from_the_manifest_and_its_weights_count_in_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's checkpoint path, alone or after PRESET=, is taken from the manifest's folder; a
    preset pointed at another file, or a file rewritten, reruns the cases it ran (the table records
    the file a preset named)."""
    weights = write(tmp_path / "models" / "tuned.pt", "weights, first version")
    manifest = write(
        tmp_path / "lists" / "cases.csv",
        "id,image,box,model\n"
        "path,/data/a.nii.gz,\"3,10,10,40,40\",../models/tuned.pt\n"
        "preset_path,/data/a.nii.gz,\"3,10,10,40,40\",medsam2=../models/tuned.pt\n"
        "preset,/data/a.nii.gz,\"3,10,10,40,40\",medsam2\n",
    )
    cases = read_manifest(manifest)
    assert [case.model for case in cases] == [str(weights.resolve()), f"medsam2={weights.resolve()}", "medsam2"]
    # A missing file is shown where it was looked for; a mistyped name stays a name (and gets a suggestion).
    missing, typo = read_manifest(write(tmp_path / "lists" / "bad.csv", "id,image,box,model\nm,a.nii.gz,\"1,2,3,4,5\",none.pt\nt,a.nii.gz,\"1,2,3,4,5\",medsam\n"))
    with pytest.raises(InputError, match=f"^model column '{tmp_path / 'lists' / 'none.pt'}': neither a known model"):
        resolve_model(missing.model, given_as="model column")
    with pytest.raises(InputError, match="^model column 'medsam': neither a known model .* did you mean 'medsam2'"):
        resolve_model(typo.model, given_as="model column")
    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(weights))
    settings = BatchSettings(out_dir=tmp_path / "out")
    first = fingerprints(cases, settings)
    assert pinned_spec("medsam2") == f"medsam2={weights.resolve()}" and pinned_spec(cases[0].model) == cases[0].model

    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(write(tmp_path / "models" / "other.pt", "other weights")))
    second = fingerprints(cases, settings)
    assert [first[c.case_id] == second[c.case_id] for c in cases] == [True, True, False]
    write(weights, "weights, second version, retrained")
    third = fingerprints(cases, settings)
    assert [second[c.case_id] == third[c.case_id] for c in cases] == [False, False, True]


def test_a_corrected_ground_truth_reruns_its_case(tmp_path: Path) -> None:
    """The ground truth counts in the fingerprint (by size and time: cheap for every case), so a
    corrected one is scored again (its stale DSC stayed)."""
    truth = write(tmp_path / "gt" / "a.nii.gz", "first ground truth")
    cases = read_manifest(write(tmp_path / "cases.csv", "id,image,box,gt\na,a.nii.gz,\"3,10,10,40,40\",gt/a.nii.gz\nb,b.nii.gz,\"3,10,10,40,40\",\n"))
    settings = BatchSettings(out_dir=tmp_path / "out")
    before = fingerprints(cases, settings)
    write(truth, "the ground truth, corrected")
    after = fingerprints(cases, settings)
    assert [before[c.case_id] == after[c.case_id] for c in cases] == [False, True]


def test_a_video_row_fails_as_a_video_whatever_its_kind(tmp_path: Path) -> None:
    """A cine DICOM is a video as an MP4 is: its row fails saying so (it ran as a scan, its frames
    propagated as slices), and the batch goes on."""
    from test_video_io import write_cine_dicom

    write_cine_dicom(tmp_path / "echo.dcm", np.zeros((4, 32, 40), np.uint8), frame_time_ms=40)
    manifest = write(tmp_path / "m.csv", "id,image,box\necho,echo.dcm,\"1,2,3,20,20\"\n")
    result = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    with (tmp_path / "out" / "results.csv").open() as table:
        (row,) = csv.DictReader(table)
    assert row["status"] == "failed" and row["error"].endswith("echo.dcm: a video, not a scan; `medsam2 segment` reads videos (prompt a frame with --frame-box)")


def test_default_case_ids_and_mask_formats(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.csv", "image\nscans/case_01.nii.gz\nscans/case_02.npz\n")
    assert [case.case_id for case in read_manifest(manifest)] == ["case_01", "case_02"]
    assert mask_suffix("auto", Path("x/case.nii.gz")) == ".nii.gz"
    assert mask_suffix("auto", Path("x/case.npz")) == ".npz"
    assert mask_suffix("auto", Path("x/photo.jpg")) == ".png"
    assert mask_suffix("auto", tmp_path) == ".dcm"  # a DICOM series folder gets a DICOM-SEG
    # so does a DICOM file named without a suffix (by its UID, say), and its case id keeps its dots
    unnamed = tmp_path / "1.2.840.113619.7"
    shutil.copy(packaged_file("pydicom", "pydicom/data/test_files/CT_small.dcm", "pip install pydicom"), unnamed)
    assert mask_suffix("auto", unnamed) == ".dcm"
    assert [case.case_id for case in read_manifest(write(tmp_path / "u.csv", f"image\n{unnamed}\n"))] == ["1.2.840.113619.7"]
    assert mask_suffix("nrrd", Path("x/case.npz")) == ".nrrd"


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("m.csv", "image,boxes\na.nii.gz,\"1,2,3,4,5\"\n", ("unknown column(s) 'boxes'", "known: id, image")),
        ("m.csv", "id,image\nx,a.nii.gz\nx,b.nii.gz\n", ("line 3", "case id 'x' repeats line 2")),
        ("m.csv", "id,image\nbad/id,a.nii.gz\n", ("line 2", "case id 'bad/id' must be letters")),
        ("m.csv", "image\nmy scans/c 1.nii.gz\n", ("line 2", "case id 'c 1', taken from the image's name (give the row an id column)")),
        ("m.csv", "id,box\nx,\"1,2,3,4,5\"\n", ("line 2: no image",)),
        ("m.csv", "image,box\na.nii.gz,1,2,3,4,5\n", ("line 2: more cells than columns",)),
        ("m.csv", "image\n", ("lists no cases",)),
        ("m.jsonl", '{"image": "a.nii.gz"}\n{"image": \n', ("line 2: not valid JSON",)),
        ("m.jsonl", '["a.nii.gz"]\n', ("line 1: expected a JSON object",)),
        ("m.jsonl", '{"image": "a.nii.gz", "box": "1,2,3,4,5", "box": "1,2,3,9,9"}\n', ("line 1: key 'box' given twice in one object",)),
        ("m.jsonl", '{"image": "a.nii.gz", "Box": "1,2,3,4,5", "box": "1,2,3,9,9"}\n', ("line 1: column(s) 'box' given twice",)),
        ("m.csv", "image,box,Box\na.nii.gz,\"1,2,3,4,5\",\"1,2,3,9,9\"\n", ("line 1: column(s) 'box' given twice",)),
        ("m.jsonl", '{"image": "a.nii.gz", "box": {"z": 1}}\n', ("line 1: box must be text",)),
        ("m.txt", "image\na.nii.gz\n", ("a manifest is a .csv or .jsonl file",)),
        ("m.csv", "image,format\na.nii.gz,txt\n", ("line 2: format 'txt': unknown mask format",)),
        # Prompt text is checked with the manifest (not case by case after the workers start), in
        # the columns' names.
        ("m.csv", "image,box\na.nii.gz,\"3,246,273\"\n", ("line 2: box '3,246,273': expected 5 or 6 numbers, got 3",)),
        ("m.csv", "image,point\na.nii.gz,\"2.5,40,40\"\n", ("line 2: point: slice must be a whole number, got 2.5",)),
        ("m.jsonl", '{"image": "a.nii.gz", "recist": [3, 5, 5, 5, 5]}\n', ("line 1: RECIST line (5, 5)-(5, 5) has no length",)),
        # and so is what no image would take (found by the workers before)
        ("m.csv", "image,point\na.nii.gz,\"2,5,5,7\"\n", ("line 2: prompt on slice 2 (object 1): point label 7 must be 1 (object) or 0 (background)",)),
        ("m.csv", "image,box\na.nii.gz,\"2,9,9,1,1\"\n", ("line 2: prompt on slice 2 (object 1): box [9, 9, 1, 1] is inverted or empty",)),
        ("m.csv", "image,box\na.nii.gz,\"-1,1,1,9,9\"\n", ("line 2: prompt on slice -1 (object 1): slice indices start at 0",)),
        ("m.csv", "image,box\na.nii.gz,\"2,1,1,9,9,0\"\n", ("line 2: prompt on slice 2 (object 0): object ids run from 1 to 65535",)),
        ("m.csv", "image,point\na.nii.gz,\"2,-4,5\"\n", ("line 2: prompt on slice 2 (object 1): point (-4, 5) lies outside the slice (coordinates start at 0)",)),
    ],
)
def test_malformed_manifests_are_one_line_errors(tmp_path: Path, name: str, text: str, fragments: tuple[str, ...]) -> None:
    manifest = write(tmp_path / name, text)
    with pytest.raises(InputError):
        read_manifest(manifest)
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out")])
    assert_one_line_error(result, str(manifest), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--engine", "spark"], ("--engine 'spark'",)),
        (["--ray-address", "127.0.0.1:6379"], ("--ray-address is for --engine ray",)),
        (["--format", "jpeg"], ("--format 'jpeg'", "unknown mask format")),
        (["--window", "wide"], ("window 'wide'",)),
        (["--axis", "oblique"], ("--axis 'oblique'",)),
        (["--device", "tpu"], ("--device 'tpu'",)),
        (["--model", "nosuch"], ("--model 'nosuch': neither a known model",)),
        (["--engine", "ray", "--ray-address", "127.0.0.1:{closed_port}"], ("no Ray cluster answers there",)),
        (["--engine", "ray", "--ray-address", "head-node"], ("expected HOST:PORT",)),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, options: list[str], fragments: tuple[str, ...]) -> None:
    if "{closed_port}" in " ".join(options):
        with socket.socket() as probe:  # a port nothing listens on once the probe is closed
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        options = [option.replace("{closed_port}", str(port)) for option in options]
    manifest = write(tmp_path / "m.csv", "image,box\na.nii.gz,\"1,2,3,4,5\"\n")
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out"), *options])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_cluster_addresses_are_checked_before_ray_waits_on_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$RAY_ADDRESS, Ray's default, is checked as --ray-address is (Ray waited on a dead one for
    minutes, deaf to SIGTERM), and a port where something other than a gRPC server listens (the
    dashboard's, say) is refused (Ray retried it for minutes)."""
    monkeypatch.setattr(ray_engine, "CONNECT_TIMEOUT_S", 1.0)
    manifest = write(tmp_path / "m.csv", "image,box\na.nii.gz,\"1,2,3,4,5\"\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out"), "--engine", "ray", "--ray-address", address])
        assert_one_line_error(result, f"--ray-address {address}: something listens there, but not a Ray cluster's GCS")
    monkeypatch.setenv("RAY_ADDRESS", address)  # closed now
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out"), "--engine", "ray"])
    assert_one_line_error(result, f"$RAY_ADDRESS {address}: no Ray cluster answers there")
    assert not (tmp_path / "out").exists()


def test_a_run_whose_engine_cannot_start_leaves_nothing_behind(tmp_path: Path) -> None:
    """No cluster, no GPU, too many workers: the folders, lock, journal and table of pending cases
    the run had made are taken away again; an existing folder keeps what it held."""
    manifest = write(tmp_path / "m.csv", "image,box\na.nii.gz,\"1,2,3,4,5\"\n")

    def no_engine(cases: int):
        raise InputError("the Ray cluster has 0 GPUs, too few for one worker of 1")

    for out in (tmp_path / "new" / "out", tmp_path / "kept"):
        with pytest.raises(InputError, match="too few for one worker"):
            run_batch(read_manifest(manifest), BatchSettings(out_dir=out), no_engine, progress=False)
    assert not (tmp_path / "new").exists()
    write(tmp_path / "kept" / "notes.txt", "mine")
    with pytest.raises(InputError):
        run_batch(read_manifest(manifest), BatchSettings(out_dir=tmp_path / "kept"), no_engine, progress=False)
    assert [path.name for path in (tmp_path / "kept").iterdir()] == ["notes.txt"]


def test_missing_manifest_and_busy_output_folder(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["batch", str(tmp_path / "none.csv"), "-o", str(tmp_path)]), "no such manifest")
    assert_one_line_error(runner.invoke(app, ["batch", str(tmp_path), "-o", str(tmp_path / "out")]), "is a folder; the manifest is a .csv or .jsonl file")
    manifest = write(tmp_path / "m.csv", "image,box\na.nii.gz,\"1,2,3,4,5\"\n")
    with ResultsStore(tmp_path / "out"):  # another driver holding the folder
        result = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "out")])
    assert_one_line_error(result, "another `medsam2 batch` is writing to this folder")


def test_output_places_that_cannot_be_written_are_refused_before_any_case(tmp_path: Path) -> None:
    """A file where the masks folder goes, a folder where the table goes: one line, status 2, no
    case run (the manifest's image does not even exist: a case would fail, not stop the run)."""
    manifest = write(tmp_path / "m.csv", "image,box\na.nii.gz,\"1,2,3,4,5\"\n")
    write(tmp_path / "o1" / "masks", "a file")
    (tmp_path / "o2" / "results.csv").mkdir(parents=True)
    for out, fragment in (("o1", "masks: cannot use as the output folder (a file is there)"), ("o2", "results.csv: a folder is there")):
        result = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / out), "--no-progress"])
        assert_one_line_error(result, fragment)
        assert not (tmp_path / out / "results.jsonl").exists()


def test_a_run_whose_output_reader_leaves_stops_as_a_unix_tool_does_and_a_rerun_goes_on(tmp_path: Path) -> None:
    """`medsam2 batch ... | head -1`: when the reader of stdout is gone the run stops (its workers with
    it), says why in one line and exits 128+SIGPIPE, not 1 ("some case failed"); the table holds every
    row and the same command run again finishes the cases."""
    manifest = write(tmp_path / "m.csv", "id,image,box\na,a.nii.gz,\"1,2,3,4,5\"\nb,b.nii.gz,\"1,2,3,4,5\"\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medsam2.cli", "batch", str(manifest), "-o", str(out), "--workers", "1", "--no-progress"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.close()  # the reader is gone before the first line is written
    errors = run.communicate(timeout=120)[1]
    assert run.returncode == 128 + signal.SIGPIPE, errors
    assert errors.strip().splitlines() == ["error: stopped: standard output was closed by the program reading it"]
    with (out / "results.csv").open() as table:
        assert [(row["case_id"], row["status"]) for row in csv.DictReader(table)] == [("a", "pending"), ("b", "pending")]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 1, rerun.stderr  # both images are missing: both cases fail, as recorded
    assert "2 of 2 cases to run (0 done earlier)" in rerun.stdout
    assert rerun.stderr.count("failed: ") == 2 and "Traceback" not in rerun.stderr


def test_a_reader_that_leaves_after_the_first_line_ends_the_run_with_sigpipe_status_not_1(tmp_path: Path) -> None:
    """`| head -1`: the reader takes the run's first line and goes; the summary then finds the pipe
    closed. rich's console exited 1 there without a word (read as "some case failed")."""
    manifest = write(tmp_path / "m.csv", "id,image,box\na,a.nii.gz,\"1,2,3,4,5\"\n")
    command = [sys.executable, "-m", "medsam2.cli", "batch", str(manifest), "-o", str(tmp_path / "out"), "--workers", "1", "--no-progress"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().startswith("1 of 1 cases to run")
    run.stdout.close()
    errors = run.communicate(timeout=120)[1]
    assert run.returncode == 128 + signal.SIGPIPE, errors
    assert errors.strip().splitlines()[-1] == "error: stopped: standard output was closed by the program reading it"


def test_a_journal_line_torn_by_a_kill_is_passed_over_and_the_next_record_stands_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(out / "results.jsonl", json.dumps({"case_id": "a", "status": "ok"}) + "\n" + '{"case_id": "b", "sta')
    with ResultsStore(out) as store:
        assert list(store.latest) == ["a"]
        store._append(json.dumps({"case_id": "c", "status": "ok"}) + "\n")
    with ResultsStore(out) as store:
        assert list(store.latest) == ["a", "c"]


def test_rows_that_cannot_be_written_or_prompted_fail_before_the_model_loads(
    tmp_path: Path, ct_lesion_cases: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DICOM-SEG of an npz, a PNG of a 3D scan, a row without prompts, a mask whose place is taken
    by a folder or by the row's own image: each fails in a moment, not after a segmentation, and says
    what to change in the row's terms (the image is left as it was)."""
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a case that could not be written or prompted")

    monkeypatch.setattr(worker, "load_predictor", no_model)
    out = tmp_path / "out"
    (out / "masks" / "taken.npz").mkdir(parents=True)
    own_image = out / "masks" / "own.npz"
    own_image.write_bytes(ct_lesion_cases[1].read_bytes())
    scan, box = ct_lesion_cases[1], '"3,246,273,276,322"'
    manifest = write(
        tmp_path / "m.csv",
        f"id,image,box,format\nseg,{scan},{box},dcm\npicture,{scan},{box},png\nnone,{scan},,\n"
        f"taken,{scan},{box},\nown,{own_image},{box},npz\n",
    )
    results = [CaseRunner(BatchSettings(out_dir=out)).run(case) for case in read_manifest(manifest)]
    assert [(r.status, r.traceback) for r in results] == [("failed", None)] * 5
    assert "seg.dcm: DICOM-SEG output needs a DICOM input image" in results[0].error
    assert "picture.png: PNG holds one 2D slice but the image has" in results[1].error
    assert results[2].error.endswith("no prompt given (give a box, point, recist, prompts or mask_prompt column)")
    assert results[3].error.endswith("taken.npz: a folder is there, and this output is a file; remove the folder or name another file")
    assert "own.npz: writing there would replace the input" in results[4].error
    assert own_image.read_bytes() == ct_lesion_cases[1].read_bytes()


def test_batch_says_which_models_the_rows_came_to_and_whose_results_the_folder_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As segment does for its one model, batch says on stderr what each model other than the
    embedded one came to, and for how many cases (it said nothing: the workers load them)."""
    weights = write(tmp_path / "tuned.pt", "weights")
    monkeypatch.setenv("MEDSAM2_MODEL_MEDSAM2", str(weights))
    missing = tmp_path / "absent.nii.gz"  # the cases fail at once: no model loads
    manifest = write(
        tmp_path / "m.csv",
        f'id,image,box,model\na,{missing},"3,10,10,40,40",medsam2\nb,{missing},"3,10,10,40,40",medsam2\n'
        f'c,{missing},"3,10,10,40,40",lite-medsam\nd,{missing},"3,10,10,40,40",tuned.pt\n',
    )
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("model:")]
    assert said == [f"model: medsam2={weights.resolve()} for 2 cases", f"model: {weights.resolve()} for 1 case"]

    # a later manifest of fewer cases: the summary says the folder holds results of others too
    fewer = write(tmp_path / "fewer.csv", f'id,image,box\na,{missing},"3,10,10,40,40"\n')
    result = runner.invoke(app, ["batch", str(fewer), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert re.search(r"cases not in this manifest \(kept\) +│ +3 │", result.stdout), result.stdout


def test_help_teaches_with_an_example() -> None:
    shown = runner.invoke(app, ["batch", "--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0
    for fragment in ("Example", "--engine", "--ray-address", "--workers", "results.csv", "--retry-failed"):
        assert fragment in shown.output, fragment


def test_first_stop_signal_is_noted_and_a_second_stops_at_once() -> None:
    """The driver's handling of SIGTERM/SIGINT (real signals to this process): the first only asks
    the run to stop, the second raises; the previous handlers are back afterwards."""
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(StoppedAtOnce) as stopped, stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.signum == stop.at_once == signal.SIGINT  # noted too: Ray re-raises a plain KeyboardInterrupt
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


def test_starting_ray_leaves_the_batch_stop_handlers_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.init sets a SIGTERM handler of its own, which exited at once (a stack dump, the running
    cases unrecorded, no summary); the engine puts the batch's back, so SIGTERM is a request to stop."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no report to Ray's servers from a test
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with stop_requests() as stop:
        ours = signal.getsignal(signal.SIGTERM)
        engine = ray_engine.RayEngine(BatchSettings(out_dir=tmp_path), workers=1, cases=1)
        try:
            assert signal.getsignal(signal.SIGTERM) is ours
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
        finally:
            engine.close()


def test_a_local_ray_cluster_starts_without_rays_notice_on_every_run(tmp_path: Path) -> None:
    """Ray's WARNING that it turned token authentication on for the cluster it starts (its safe
    default) came with every `--engine ray` run; the batch's own lines are all that remain."""
    manifest = write(tmp_path / "m.csv", f'id,image,box\nlost,{tmp_path / "lost.nii.gz"},"1,2,3,9,9"\n')
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # no report to Ray's servers from a test
    run = subprocess.run(
        [sys.executable, "-m", "medsam2.cli", "batch", str(manifest), "-o", str(tmp_path / "out"), "--engine", "ray", "--workers", "1", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 1, run.stderr
    assert "lost: failed" in run.stdout + run.stderr
    assert "Token authentication" not in run.stdout + run.stderr, run.stderr


def test_a_stop_signal_after_the_last_case_leaves_the_summary_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM while the summary is printed (the run's cases all recorded) ended the command
    silently with 143 (the command's own handler was back); now it is noted and the run ends as it would have."""
    manifest = write(tmp_path / "m.csv", f'id,image,box\nlost,{tmp_path / "lost.nii.gz"},"1,2,3,9,9"\n')
    summary = batch_cli.print_summary

    def signalled_summary(report, console):
        os.kill(os.getpid(), signal.SIGTERM)
        summary(report, console)

    monkeypatch.setattr(batch_cli, "print_summary", signalled_summary)
    previous = signal.signal(signal.SIGTERM, stop_on_signal)  # as the medsam2 command sets it
    try:
        result = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 1, result.output  # the failed case's status, not 143
    assert "Batch summary" in result.output and f"wrote {tmp_path / 'out' / 'results.csv'}" in result.output


def test_the_summary_shows_an_error_with_brackets_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """A failed case's error is printed word for word: the one-line error of an unconfigured preset
    ends 'under [models] in CONFIG', which rich's markup read as a tag and dropped."""
    from medsam2.cli.console import StdoutConsole
    from medsam2.distributed.runner import BatchReport

    error = "model column sam2.1-small: no checkpoint configured; add '\"sam2.1-small\" = \"/w.pt\"' under [models] in /c.toml"
    record = {"case_id": "c[1]", "status": "failed", "error": error}
    batch_cli.print_summary(BatchReport(cases=1, done_before=0, records=[record], latest={"c[1]": record}, seconds=1.0), StdoutConsole(width=400))
    shown = capsys.readouterr().out
    assert "under [models] in /c.toml" in shown and "c[1]" in shown


def test_a_detached_header_mask_is_replaced_or_missed_together_with_its_data_file(tmp_path: Path) -> None:
    """A .mhd / .nhdr mask is two files: a rerun in another format (or a failing rerun) removes both,
    and a case whose data file was deleted is not done."""
    import SimpleITK as sitk

    from medsam2.distributed.manifest import Case
    from medsam2.distributed.worker import CaseResult

    out = tmp_path / "out"
    case = Case("c1", tmp_path / "c1.npz", PromptSources(boxes=("0,1,1,2,2",)))
    for suffix, data_file, then in ((".mhd", "c1.zraw", "ok"), (".nhdr", "c1.raw.gz", "failed")):
        with ResultsStore(out) as store:
            header = out / "masks" / f"c1{suffix}"
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.uint8)), str(header), useCompression=True)
            store.record(CaseResult("c1", "ok", 1.0, "w", f"masks/c1{suffix}"), case, "fp", "lite-medsam")
            assert (out / "masks" / data_file).is_file() and store.is_done(case, "fp")
            (out / "masks" / data_file).unlink()
            assert not store.is_done(case, "fp")  # the header alone is no mask
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.uint8)), str(header), useCompression=True)
            if then == "ok":  # rerun as npz: the worker wrote the new mask before its record
                (out / "masks" / "c1.npz").write_bytes(b"")
            store.record(CaseResult("c1", then, 1.0, "w", "masks/c1.npz" if then == "ok" else None), case, "fp", "lite-medsam")
            assert sorted(path.name for path in (out / "masks").iterdir()) == (["c1.npz"] if then == "ok" else [])
            (out / "masks" / "c1.npz").unlink(missing_ok=True)


def test_a_full_disk_while_a_result_is_recorded_is_one_line_and_the_run_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`batch` on a disk that filled up as a case's record was appended ended in a traceback (the
    buffered journal's OSError, raised again as the store closed). Now a one-line error names the
    journal, the part of the line that was written is cut off again, and the store closes cleanly."""
    from medsam2.distributed import results
    from medsam2.distributed.worker import CaseResult

    out = tmp_path / "out"
    case = Case("c1", tmp_path / "c1.nii.gz", PromptSources())
    real_write = os.write

    def full_midway(descriptor, data):  # a short write, then no room at all: what a full disk does
        if len(data) > 4:
            return real_write(descriptor, data[:4])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with ResultsStore(out) as store:
        store.record(CaseResult("c0", "failed", 1.0, "here", error="x"), case, "f0", "lite-medsam")
        monkeypatch.setattr(results.os, "write", full_midway)
        with pytest.raises(InputError) as raised:
            store.record(CaseResult("c1", "failed", 1.0, "here", error="y"), case, "f1", "lite-medsam")
        monkeypatch.undo()
    assert str(raised.value) == f"{out / 'results.jsonl'}: cannot write (No space left on device)"
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 1 and json.loads(lines[0])["case_id"] == "c0"
    with ResultsStore(out) as store:
        assert list(store.latest) == ["c0"]


FULL_JOURNAL = """
import errno, os, sys
real_write = os.write

def full_journal(descriptor, data):  # the journal's disk is full; the workers' pipes are not
    if os.readlink(f"/proc/self/fd/{descriptor}").endswith("results.jsonl"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(descriptor, data)

os.write = full_journal
from medsam2.cli.main import main
sys.argv = ["medsam2", *sys.argv[1:]]
main()
"""


def test_a_full_disk_under_the_local_engine_is_one_line_with_no_leaked_semaphore_warning(tmp_path: Path) -> None:
    """`batch` whose journal hit a full disk printed its one-line error, then Python's
    'resource_tracker: There appear to be 1 leaked semaphore objects' (tqdm's multiprocessing lock
    in the worker terminated on the error). Now the error is all it says, and a rerun resumes."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.arange(3 * 32 * 32, dtype=np.int16).reshape(3, 32, 32)), str(tmp_path / "c1.nii.gz"))
    manifest = write(tmp_path / "cases.csv", 'id,image,box\nc1,c1.nii.gz,"1,8,8,20,20"\n')
    out = tmp_path / "out"
    command = [sys.executable, "-c", FULL_JOURNAL, "batch", str(manifest), "--out", str(out), "--workers", "1", "--threads", "1", "--no-progress"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and failed.stderr.strip() == f"error: {out / 'results.jsonl'}: cannot write (No space left on device)", failed.stderr
    rerun = subprocess.run(command[:1] + ["-m", "medsam2.cli", *command[3:]], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "leaked" not in rerun.stderr, rerun.stderr
    assert [row["status"] for row in csv.DictReader((out / "results.csv").open())] == ["ok"]
