"""The annotation database on SQLite and on a real PostgreSQL server started here: migrations,
concurrent leases, lease expiry, an import killed mid-way, and the training-set export."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text

from medsam2.annotate import (
    CaseState,
    Predictors,
    WorkSession,
    effort_report,
    export_training_set,
    import_cases,
    init_project,
    lease_next,
    open_project,
    reject,
    release,
    relocate,
    write_report,
)
from medsam2.annotate.db import alembic_config
from medsam2.annotate.images import placement_of, voxels_sha256
from medsam2.annotate.project import utc_now
from medsam2.annotate.schema import Base, InteractionRow
from medsam2.annotate.store import stored_path
from medsam2.errors import InputError
from medsam2.io import check_same_geometry, load_image, save_mask
from medsam2.engine import models as engine_models
from medsam2.engine.prompts import box_from_mask
from medsam2.io.masks import load_mask, stored_array
from medsam2.io.training_set import file_sha256, read_manifest
from medsam2.models.weights import LITE_MEDSAM_SHA256, bundled_lite_medsam_checkpoint
from medsam2.preprocess import to_uint8

REPO_ROOT = Path(__file__).resolve().parents[1]


# -- a PostgreSQL server of our own ----------------------------------------------------------------


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    pg_ctl = found[-1] if found else shutil.which("pg_ctl")
    if pg_ctl is None:
        pytest.fail("PostgreSQL server binaries not found; `make test` installs Debian's postgresql package", pytrace=False)
    return Path(pg_ctl).parent


def as_server_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster on a free port; yields its base URL (trust authentication)."""
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="medsam2-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = free_port()
    subprocess.run(
        as_server_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "medsam2", "-E", "UTF8", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://medsam2@127.0.0.1:{port}"
    finally:
        subprocess.run(as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    """The --db value of a fresh database: an SQLite file in the project, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return "project.db"
    server = request.getfixturevalue("postgres_server")
    name = f"test_{request.node.name.split('[')[0][-40:]}_{os.getpid()}_{time.monotonic_ns()}".lower()
    admin = create_engine(f"{server.replace('postgresql://', 'postgresql+psycopg://')}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


# -- synthetic cases with known masks ---------------------------------------------------------------


def write_case(folder: Path, name: str, rng: np.random.Generator, shape=(6, 24, 20)) -> tuple[Path, Path]:
    """A CT-like NIfTI with an oblique geometry and a cuboid label map beside it."""
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=shape).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, 7.0))
    angle = np.deg2rad(10)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    image_path = folder / "images" / f"{name}.nii.gz"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(image_path))
    volume = load_image(image_path)
    labels = np.zeros(shape, dtype=np.uint8)
    z0 = int(rng.integers(0, 3))
    labels[z0 : z0 + 3, 5:15, 4:12] = 1
    mask_path = save_mask(labels, like=volume, path=folder / "masks" / f"{name}.nii.gz")
    return image_path, mask_path


@pytest.fixture
def synthetic_cases(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    for number in range(12):
        write_case(tmp_path / "data", f"case_{number:02d}", rng)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def predictors() -> Predictors:
    return Predictors()


# -- tests -----------------------------------------------------------------------------------------


def test_migrations_create_the_schema_the_models_describe(tmp_path: Path, database: str) -> None:
    project = init_project(tmp_path / "project", database)
    with project.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == "0003"
        assert compare_metadata(context, Base.metadata) == []
    project.close()
    reopened = open_project(tmp_path / "project")  # an up-to-date database is left alone
    assert reopened.status().rounds[0].model_version.startswith("lite-medsam@79d8c9dca6db")
    assert alembic_config().get_main_option("script_location").endswith("migrations")
    reopened.close()
    with pytest.raises(InputError, match="already an annotation project"):
        init_project(tmp_path / "project", database)


def test_two_workers_never_get_the_same_case(tmp_path: Path, database: str, synthetic_cases: Path) -> None:
    project = init_project(tmp_path / "project", database)
    import_cases(project, [synthetic_cases / "images"], progress=False)
    taken: dict[str, list[str]] = {"alice": [], "bob": []}
    start = threading.Barrier(2)
    errors = []

    def work(annotator: str) -> None:
        own = open_project(tmp_path / "project")  # its own engine: separate connections
        try:
            start.wait()
            while (case := lease_next(own, annotator)) is not None:
                taken[annotator].append(case.name)
                time.sleep(0.05)  # working on it: the other worker must take another case meanwhile
                reject(own, case.name, annotator, "concurrency test")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            own.close()

    workers = [threading.Thread(target=work, args=(name,)) for name in taken]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    everything = taken["alice"] + taken["bob"]
    assert sorted(everything) == sorted(c.name for c in project.cases()) and len(set(everything)) == 12
    assert taken["alice"] and taken["bob"], taken  # both really competed
    with project.transaction() as session:
        per_case = session.execute(
            select(InteractionRow.case_id, func.count()).where(InteractionRow.kind == "lease").group_by(InteractionRow.case_id)
        ).all()
    assert len(per_case) == 12 and all(count == 1 for _, count in per_case)
    assert project.status().counts["rejected"] == 12
    project.close()


def test_a_lease_runs_out_and_passes_on_with_the_work_done(tmp_path: Path, database: str, synthetic_cases: Path, predictors) -> None:
    init_project(tmp_path / "project", database).close()
    now = [utc_now()]
    project = open_project(tmp_path / "project", clock=lambda: now[0])
    import_cases(project, [synthetic_cases / "images" / "case_03.nii.gz"], masks=synthetic_cases / "masks" / "case_03.nii.gz", progress=False)
    case = lease_next(project, "alice")
    assert case.state == CaseState.IN_REVIEW.value and lease_next(project, "bob") is None
    assert lease_next(project, "alice").name == case.name  # one case at a time: the held one again
    alice = WorkSession(project, case.name, "alice", predictors)
    alice_elsewhere = WorkSession(project, case.name, "alice", predictors)  # a second window, say
    erased = np.zeros(alice.model.slice_hw, dtype=bool)
    first_slice = int(np.flatnonzero(alice.model.slice_labels().reshape(6, -1).any(axis=1))[0])
    alice.add_correction(first_slice, 1, erased)  # recorded: survives alice's lease
    with pytest.raises(InputError, match="changed elsewhere since this work session opened"):
        alice_elsewhere.add_correction(first_slice, 1, erased)  # built from a record that has moved on
    now[0] += project.lease_duration + timedelta(seconds=1)
    assert project.status().leases == []
    assert lease_next(project, "bob").name == case.name
    with pytest.raises(InputError, match=f"case {case.name} is leased to bob"):
        alice.add_correction(first_slice + 1, 1, erased)
    with pytest.raises(InputError, match="work session is closed"):
        alice.accept()
    bob = WorkSession(project, case.name, "bob", predictors)
    assert np.array_equal(bob.labels(), alice.labels())  # alice's recorded correction, rebuilt
    release(project, case.name, "bob")
    assert project.cases()[0].state == CaseState.PRESEGMENTED.value
    with pytest.raises(InputError, match="not leased to bob"):
        bob.accept()
    # A case nobody holds can be rejected (one whose image cannot be opened is given back at once);
    # one someone holds cannot, but by them.
    assert lease_next(project, "alice").name == case.name
    with pytest.raises(InputError, match=f"case {case.name} is leased to alice"):
        reject(project, case.name, "lead", "image unusable")
    release(project, case.name, "alice")
    assert reject(project, case.name, "lead", "image unusable").state == CaseState.REJECTED.value
    assert project.cases()[0].finished_by == "lead" and lease_next(project, "bob") is None
    project.close()


def test_an_import_killed_half_way_leaves_complete_cases_only(tmp_path: Path, database: str) -> None:
    rng = np.random.default_rng(3)
    total = 150
    for number in range(total):
        write_case(tmp_path / "data", f"case_{number:03d}", rng, shape=(4, 16, 16))
    init_project(tmp_path / "project", database).close()
    importer = subprocess.Popen(
        [sys.executable, "-m", "medsam2.cli", "annotate", "import", str(tmp_path / "project"), str(tmp_path / "data" / "images"),
         "--masks", str(tmp_path / "data" / "masks"), "--no-progress"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    project = open_project(tmp_path / "project")
    deadline = time.monotonic() + 120
    while len(project.cases()) < 10 and importer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    importer.send_signal(signal.SIGKILL)
    importer.wait()
    assert importer.returncode == -signal.SIGKILL, importer.stderr.read().decode()
    committed = project.cases()
    assert 10 <= len(committed) < total, "the import was not killed mid-way"
    for case in committed:  # every committed case is whole: its stored mask exists with its checksum
        assert case.state == CaseState.PRESEGMENTED.value and case.shape == [4, 16, 16]
        labels = load_mask(stored_path(project.folder, case.preseg_mask, case.preseg_sha256)).array
        assert np.array_equal(labels, load_mask(tmp_path / "data" / "masks" / f"{case.name}.nii.gz").array)
    if project.engine.dialect.name == "sqlite":
        with project.engine.connect() as connection:
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    summary = import_cases(project, [tmp_path / "data" / "images"], masks=tmp_path / "data" / "masks", progress=False)
    assert len(summary.skipped) == len(committed) and len(summary.imported) == total - len(committed)
    assert sorted(c.name for c in project.cases()) == [f"case_{n:03d}" for n in range(total)]
    project.close()


@pytest.mark.parametrize("layout", ["nifti", "npz"])
def test_export_round_trips_into_the_training_set_reader(tmp_path: Path, synthetic_cases: Path, ct_lesion_cases, predictors, layout) -> None:
    project = init_project(tmp_path / "project")
    import_cases(project, [synthetic_cases / "images"], masks=synthetic_cases / "masks", progress=False)
    import_cases(project, [ct_lesion_cases[1]], masks=ct_lesion_cases[1], progress=False)  # the npz's own gts
    accepted = {}
    for _ in range(3):
        case = lease_next(project, "alice")
        work = WorkSession(project, case.name, "alice", predictors)
        edited = work.labels().copy()
        edited[np.nonzero(edited)[0].max()] = 0  # the annotator erases the last slice of the object
        accepted[case.name] = edited
        row = work.accept(edited)
        assert row.mask_sha256 == file_sha256(project.folder / row.mask) and 0 < row.initial_dice < 1
    out = tmp_path / "trainset"
    export_training_set(project, out, layout, progress=False)
    root, cases = read_manifest(out)
    assert root == out.resolve() and sorted(c.id for c in cases) == sorted(accepted)
    for case in cases:
        source = load_image(case.source)
        image = load_image(case.image_path(root))
        mask = load_mask(case.mask_path(root))
        check_same_geometry(source, image, "exported image vs source")
        check_same_geometry(image, mask, "exported mask vs image")
        assert np.array_equal(mask.array, accepted[case.id])
        expected = to_uint8(source).array if layout == "npz" else source.array
        assert np.array_equal(image.array, expected)
        assert case.model == "imported" and case.round == 1 and case.labels == {"1": "object 1"}
    with pytest.raises(InputError, match="holds an earlier export \\(use --overwrite to replace it\\)"):
        export_training_set(project, out, layout, progress=False)
    export_training_set(project, out, layout, rounds=[1], overwrite=True, progress=False)
    assert read_manifest(out)[1] == cases
    # --overwrite replaces an earlier export only: never a folder of other files, nor the project.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("important")
    (tmp_path / "a_file").write_text("x")
    project_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "project").rglob("*"))
    for target, message in [
        (tmp_path / "notes", "a folder holding other files (no manifest.json of an earlier export)"),
        (tmp_path / "project", "the project's own folder, or one around or inside it"),
        (tmp_path, "the project's own folder, or one around or inside it"),
        (tmp_path / "project" / "files", "the project's own folder, or one around or inside it"),
        (tmp_path / "a_file", "a file, not a folder"),
        (tmp_path / "a_file" / "sub", "a_file is a file, not a folder"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            export_training_set(project, target, layout, overwrite=True, progress=False)
    assert (tmp_path / "notes" / "notes.txt").read_text() == "important"
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "project").rglob("*")) == project_files
    project.close()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_an_exported_nifti_image_keeps_its_header(tmp_path: Path, ct_lesion_cases, predictors, suffix: str) -> None:
    """A registered image (FSL and ANTs write an sform of code 2 beside a qform of code 1) with units:
    SimpleITK rewrote the header (sform code 2 -> 1, units changed); the export keeps it byte for
    byte, and the voxels."""
    lesion = load_image(ct_lesion_cases[1])
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (-120.0, 80.0, 30.0)
    nifti = nib.Nifti1Image(lesion.array.transpose(2, 1, 0).astype(np.int16) * 4 - 1024, affine)
    nifti.set_qform(affine, code=1)
    tilted = affine.copy()
    tilted[0, 3] += 5.0  # registered: the sform places the scan 5 mm from where the scanner did
    nifti.set_sform(tilted, code=2)
    nifti.header.set_xyzt_units("mm", "sec")
    source = tmp_path / f"scan{suffix}"
    nib.save(nifti, source)
    project = init_project(tmp_path / "project")
    import_cases(project, [source], progress=False)
    case = lease_next(project, "alice")
    labels = np.zeros(lesion.shape, np.uint8)
    labels[stored_array(lesion, "gts") > 0] = 1
    WorkSession(project, case.name, "alice", predictors).accept(labels)
    export_training_set(project, tmp_path / "trainset", "nifti", progress=False)
    root, (exported,) = read_manifest(tmp_path / "trainset")
    written, original = nib.load(exported.image_path(root)), nib.load(source)
    assert (int(original.header["sform_code"]), int(original.header["xyzt_units"])) == (2, 10)
    assert written.header.binaryblock == original.header.binaryblock
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    project.close()


def test_effort_report_compares_rounds(tmp_path: Path, synthetic_cases: Path, predictors) -> None:
    init_project(tmp_path / "project").close()
    now = [utc_now()]
    project = open_project(tmp_path / "project", clock=lambda: now[0])
    images, masks = synthetic_cases / "images", synthetic_cases / "masks"

    def review(erase: int, minutes: float) -> None:
        case = lease_next(project, "alice")
        work = WorkSession(project, case.name, "alice", predictors)
        covered = np.flatnonzero(work.model.slice_labels().reshape(6, -1).any(axis=1))
        for index in covered[:erase]:
            work.add_correction(int(index), 1, np.zeros(work.model.slice_hw, dtype=bool))
        now[0] += timedelta(minutes=minutes)
        work.accept()

    for name in ("case_00", "case_01"):
        import_cases(project, [images / f"{name}.nii.gz"], masks=masks / f"{name}.nii.gz", progress=False)
    review(erase=2, minutes=4)
    review(erase=2, minutes=2)
    project.start_round("lite-medsam")
    import_cases(project, [images / "case_02.nii.gz"], masks=masks / "case_02.nii.gz", progress=False)
    review(erase=1, minutes=1)
    # One case of round 2 the model pre-segments, from the annotator's first prompt.
    import_cases(project, [images / "case_03.nii.gz"], progress=False)
    work = WorkSession(project, lease_next(project, "alice").name, "alice", predictors)
    truth = load_mask(masks / "case_03.nii.gz").array > 0
    key = int(np.argmax(truth.reshape(6, -1).sum(axis=1)))
    work.add_prompt(key, 1, box=box_from_mask(truth[key]))
    work.accept()
    report = effort_report(project)
    assert [(c.round, c.interactions, c.corrections, c.slices_touched, c.manual_slices, c.seconds) for c in report.cases[:3]] == [
        (1, 2, 2, 2, 1, 240.0), (1, 2, 2, 2, 1, 120.0), (2, 1, 1, 1, 2, 60.0)
    ]
    prompted = report.cases[3]
    assert [c.preseg_source for c in report.cases] == ["mask", "mask", "mask", "first-prompt"] and prompted.interactions == 1
    first, second = report.rounds
    assert (first.round, first.accepted, first.interactions, first.manual_slices, first.mean_seconds) == (1, 2, 4, 2, 180.0)
    assert first.reduction == pytest.approx(1 - 4 / 2)
    assert second.reduction == pytest.approx(1 - (1 + 1) / (2 + prompted.manual_slices))
    # The model's quality is its own pre-segmentations' Dice: imported masks (Dice 0.5 and 0.8 here) stay out.
    assert report.cases[0].initial_dice == pytest.approx(2 * 1 / (3 + 1)) and report.cases[2].initial_dice == pytest.approx(2 * 2 / (3 + 2))
    assert first.mean_initial_dice is None and second.mean_initial_dice == pytest.approx(prompted.initial_dice)
    written = write_report(report, tmp_path / "effort")
    assert [p.name for p in written] == ["cases.csv", "rounds.csv", "effort.png"]
    rows = (tmp_path / "effort" / "rounds.csv").read_text().splitlines()
    assert rows[0].startswith("round,model_version,accepted") and len(rows) == 3
    assert written[2].read_bytes()[:4] == b"\x89PNG"
    project.close()


def test_effort_counts_the_time_annotators_held_a_case_not_the_time_it_waited(tmp_path: Path, synthetic_cases: Path, predictors) -> None:
    """alice works 2 minutes and leaves her lease to run out; bob takes the case 40 minutes in,
    works 2 minutes and releases it; it waits in the queue an hour; carol accepts it 3 minutes after
    taking it. The case cost 7 minutes of annotators' time (was 103: from the first lease on)."""
    init_project(tmp_path / "project").close()
    start = utc_now()
    now = [start]
    project = open_project(tmp_path / "project", clock=lambda: now[0])
    import_cases(project, [synthetic_cases / "images" / "case_00.nii.gz"], masks=synthetic_cases / "masks" / "case_00.nii.gz", progress=False)

    def at(minutes: float) -> None:
        now[0] = start + timedelta(minutes=minutes)

    def correct(work: WorkSession, index: int) -> None:
        work.add_correction(index, 1, np.zeros(work.model.slice_hw, dtype=bool))

    name = lease_next(project, "alice").name
    at(2)
    correct(WorkSession(project, name, "alice", predictors), 0)
    at(40)
    assert lease_next(project, "bob").name == name
    at(41)
    correct(WorkSession(project, name, "bob", predictors), 1)
    at(42)
    release(project, name, "bob")
    at(100)
    assert lease_next(project, "carol").name == name
    at(103)
    WorkSession(project, name, "carol", predictors).accept()
    (effort,) = effort_report(project).cases
    assert (effort.annotators, effort.interactions, effort.seconds) == ("alice,bob,carol", 2, 7 * 60.0)
    project.close()


def test_a_round_records_its_checkpoint_and_refuses_it_changed(tmp_path: Path, synthetic_cases: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = Path(shutil.copy(bundled_lite_medsam_checkpoint(), tmp_path / "finetuned.pth"))
    project = init_project(tmp_path / "project")
    round_two = project.start_round(str(checkpoint))
    assert (round_two.number, round_two.model) == (2, str(checkpoint.resolve()))
    # named with its folder: train runs each write a model.pt
    assert round_two.model_version == f"{tmp_path.name}/finetuned.pth@{LITE_MEDSAM_SHA256[:12]}" and round_two.model_sha256 == LITE_MEDSAM_SHA256
    builds = []
    build = engine_models.load_predictor
    monkeypatch.setattr(engine_models, "load_predictor", lambda spec, **options: builds.append(spec) or build(spec, **options))
    Predictors().get(round_two)
    assert builds == [str(checkpoint.resolve())]  # its checksum checked, the model built once, from its path
    import_cases(project, [synthetic_cases / "images" / "case_05.nii.gz"], masks=synthetic_cases / "masks" / "case_05.nii.gz", progress=False)
    case = lease_next(project, "alice")
    work = WorkSession(project, case.name, "alice", Predictors())
    assert work.model.round.number == 2 and np.array_equal(work.labels(), load_mask(synthetic_cases / "masks" / "case_05.nii.gz").array)
    with open(checkpoint, "ab") as handle:
        handle.write(b"\0")  # the file changes after the round began
    reopened = WorkSession(project, case.name, "alice", Predictors())  # the imported mask, corrected by hand: no model needed
    np.testing.assert_array_equal(reopened.labels(), work.labels())
    with pytest.raises(InputError, match="round 2: model .*finetuned.pth has changed since the round began"):
        reopened.add_prompt(0, 1, box=(10, 10, 30, 30))  # the model is needed
    project.close()


def test_bad_projects_and_databases(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an annotation project"):
        open_project(tmp_path)
    with pytest.raises(InputError, match="unsupported database 'mysql'"):
        init_project(tmp_path / "a", "mysql://localhost/x")
    with pytest.raises(InputError, match="connection"):
        init_project(tmp_path / "b", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # a failed init leaves no folder
    # The URL is stored in the shared project file: a password in it would be readable by all.
    with pytest.raises(InputError, match=r"medsam2:\*\*\*@.*leave the password out of the URL.*PGPASSWORD") as refused:
        init_project(tmp_path / "d", "postgresql://medsam2:s3cret@127.0.0.1:5432/x")
    assert "s3cret" not in str(refused.value) and not (tmp_path / "d").exists()
    project = init_project(tmp_path / "c")
    with pytest.raises(InputError, match="no such file or folder"):
        import_cases(project, [tmp_path / "missing.nii.gz"], progress=False)
    with pytest.raises(InputError, match="annotator 'two words'"):
        lease_next(project, "two words")
    project.close()
    # A lost or emptied SQLite file is said as such, and opening it creates no new one in its place.
    database = tmp_path / "c" / "project.db"
    database.write_bytes(b"")
    with pytest.raises(InputError, match=r"project\.db: the project's database is empty \(restore it from a backup\)"):
        open_project(tmp_path / "c")
    database.unlink()
    with pytest.raises(InputError, match="the project's database is missing"):
        open_project(tmp_path / "c")
    assert not database.exists()


def test_masks_named_unlike_the_images_are_said_at_import(tmp_path: Path, synthetic_cases: Path) -> None:
    """A masks folder that matches some images: the others are imported without one and listed; one
    that matches none (named another way) is refused, as nothing would be reviewed."""
    images = sorted((synthetic_cases / "images").glob("case_0[0-2].nii.gz"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(synthetic_cases / "masks" / "case_01.nii.gz", partial)
    project = init_project(tmp_path / "project")
    summary = import_cases(project, images, masks=partial, progress=False)
    assert summary.imported == ["case_00", "case_01", "case_02"] and summary.without_mask == ["case_00", "case_02"]
    assert {case.name: case.state for case in project.cases()} == {
        "case_00": CaseState.NEW.value, "case_01": CaseState.PRESEGMENTED.value, "case_02": CaseState.NEW.value
    }
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(synthetic_cases / "masks" / "case_00.nii.gz", renamed / "case_00_seg.nii.gz")
    with pytest.raises(InputError, match=r"--masks .*renamed: no mask there is named like an image \(the mask of case_00.nii.gz would be case_00"):
        import_cases(project, images, masks=renamed, progress=False)
    # The same image again under another name, or from another folder, is not a second case;
    # another image under a case's name is refused.
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(images[0], copies / "case_00_copy.nii.gz")
    shutil.copy(images[1], copies / "case_01.nii.gz")
    copy_masks = tmp_path / "copy_masks"
    copy_masks.mkdir()
    shutil.copy(synthetic_cases / "masks" / "case_00.nii.gz", copy_masks / "case_00_copy.nii.gz")
    stored = sorted((project.folder / "files").rglob("*"))
    summary = import_cases(project, [copies, synthetic_cases / "images" / "case_03.nii.gz"], masks=copy_masks, progress=False)
    assert summary.imported == ["case_03"] and summary.skipped == []
    assert sorted((project.folder / "files").rglob("*")) == stored  # a duplicate's mask is not stored
    assert summary.duplicates == {str(copies / "case_00_copy.nii.gz"): "case_00", str(copies / "case_01.nii.gz"): "case_01"}
    shutil.copy(synthetic_cases / "images" / "case_04.nii.gz", copies / "case_01.nii.gz")
    with pytest.raises(InputError, match=r"case_01.nii.gz: the project already has a case 'case_01', from .* \(other voxels\)"):
        import_cases(project, [copies], progress=False)
    assert len(project.cases()) == 4
    project.close()


def test_a_project_of_the_first_schema_upgrades_and_relocated_cases_get_their_voxels(
    tmp_path: Path, database: str, synthetic_cases: Path, capsys
) -> None:
    """A database at revision 0001 (cases without a voxel digest or placement) is brought up to date
    when opened; moving its images elsewhere and relocating records both then, as an import now does."""
    project = init_project(tmp_path / "project", database)
    images = synthetic_cases / "images"
    import_cases(project, [images / "case_00.nii.gz", images / "case_01.nii.gz"], progress=False)
    recorded = {row.name: (row.voxels_sha256, row.placement) for row in project.cases()}
    first = load_image(images / "case_00.nii.gz")
    assert recorded["case_00"] == (voxels_sha256(first), placement_of(first)) and recorded["case_01"][0] != recorded["case_00"][0]
    config = alembic_config()
    with project.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    project.close()
    capsys.readouterr()

    project = open_project(tmp_path / "project")  # migrated to the head again: digests and placements are gone
    with project.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0003"
    # whoever upgrades a shared database is told, since older medsam2 installs can no longer open it
    assert "upgraded the database's schema from revision 0001 to 0003" in capsys.readouterr().err
    open_project(tmp_path / "project").close()
    assert "upgraded" not in capsys.readouterr().err  # an up-to-date database: nothing said
    assert {row.name: (row.voxels_sha256, row.placement) for row in project.cases()} == {"case_00": (None, None), "case_01": (None, None)}
    moved_to = Path(shutil.copytree(images, tmp_path / "moved"))
    moves = relocate(project, images, moved_to, progress=False)
    assert [(move.kind, move.name, move.new) for move in moves] == [("case", name, str(moved_to / f"{name}.nii.gz")) for name in ("case_00", "case_01")]
    assert {row.name: (row.image, row.voxels_sha256, row.placement) for row in project.cases()} == {
        name: (str(moved_to / f"{name}.nii.gz"), *recorded[name]) for name in recorded
    }
    project.close()


def test_a_database_gone_while_serving_is_a_503_not_a_bad_request(tmp_path: Path, postgres_server: str) -> None:
    """The annotation routes answered 400 (the client's mistake) when the project's database went
    away; the request was fine, the service was not there: 503, in one line, and the command line
    says so in one line too."""
    from fastapi.testclient import TestClient

    from medsam2.annotate.routes import annotation_router
    from medsam2.server import ServerSettings, create_app

    name = f"gone_{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(f"{postgres_server.replace('postgresql://', 'postgresql+psycopg://')}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    init_project(tmp_path / "project", f"{postgres_server}/{name}").close()
    with TestClient(create_app(ServerSettings(), routers=[annotation_router(tmp_path / "project")]), base_url="http://127.0.0.1") as client:
        assert client.get("/api/annotate/status").status_code == 200
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        gone = client.get("/api/annotate/status")
        assert gone.status_code == 503, gone.text
        assert gone.json()["error"].startswith(f"{postgres_server}/{name}: ")  # as the user wrote it, no driver name
        assert gone.json()["error"].endswith("does not exist; create it first (createdb NAME), or name another")
    admin.dispose()
    result = subprocess.run(
        [sys.executable, "-m", "medsam2.cli", "annotate", "status", str(tmp_path / "project")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr


def test_sqlites_disk_io_error_on_a_full_disk_says_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk SQLite fails to grow its -shm file and says 'disk I/O error' (seen on a 200k
    tmpfs: `annotate import` ended 'error: sqlite:///.../project.db: disk I/O error'), which reads as
    a broken disk; with the database's folder full it now says so."""
    import sqlite3

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from medsam2.annotate import db

    url = make_url(f"sqlite:///{tmp_path / 'project.db'}")
    error = OperationalError("INSERT INTO cases ...", {}, sqlite3.OperationalError("disk I/O error"))
    assert db.reason(error, url) == "disk I/O error"  # a disk with room: as SQLite said it
    monkeypatch.setattr(db, "disk_full", lambda folder: Path(folder) == tmp_path)
    assert db.reason(error, url) == "database or disk is full (No space left on device)"
    assert db.reason(error) == "disk I/O error"  # no database named: nothing to look at
