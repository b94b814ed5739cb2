"""`medsam2 batch` end to end on the shared CT lesion cases with the real LiteMedSAM: the local
engine stopped by SIGTERM midway and resumed, the Ray engine on a local 2-CPU cluster with one of
its workers killed, and both against `medsam2 segment`.

One manifest serves every run: three real cases (a box, a prompts JSON file, an explicit model),
a missing image, a box outside the slice and ground truth of another scan. Each engine runs it once;
the tests read the records. The real cases are slabs of 5-7 slices of the shared scans around their
key slice (unchanged pixels and ground truth, geometry moved with the crop), to keep the runs short.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
from typer.testing import CliRunner

from medsam2.cli.main import app
from medsam2.distributed import BatchSettings, read_manifest
from medsam2.distributed.results import fingerprints
from medsam2.distributed.worker import CaseRunner
from medsam2.engine.prompts import box_from_mask
from medsam2.io import check_same_geometry, load_image, save_mask
from medsam2.io.masks import load_mask, stored_array
from medsam2.metrics import dice, nsd

REAL_CASES = ("c01", "c02", "c15")
# Slices kept before and after each case's key slice: unequal, so c01's ground truth does not fit
# c02 ("badgt"); c15, whose worker is killed mid-case, the longest.
SLABS = {"c01": (2, 3), "c02": (2, 2), "c15": (3, 3)}
BAD_CASES = {
    "missing": "no such file or folder",
    "badbox": "reaches outside the 512x512 slice",
    "badgt": "shape (Z, Y, X) differs",  # ground truth of another scan
}
TIMEOUT_S = 600
# A worker busy this long runs a real case: the bad rows fail in milliseconds, a real case takes seconds.
KILL_AFTER_S = 0.5


@dataclass
class Manifests:
    folder: Path
    csv: Path
    jsonl: Path
    images: dict[str, Path]


@dataclass
class Run:
    out: Path
    records: list[dict]  # the journal after the run, in order
    returncode: int
    output: str


def read_journal(path: Path) -> list[dict]:
    """The journal's complete lines (a line being written may be torn)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def batch_args(manifest: Path, out: Path, *options: str) -> list[str]:
    return ["batch", str(manifest), "--out", str(out), "--no-progress", *options]


def batch_command(manifest: Path, out: Path, *options: str) -> list[str]:
    """The command line of a driver in its own process (so it can be signalled)."""
    return [sys.executable, "-m", "medsam2.cli", *batch_args(manifest, out, *options)]


def key_slice_box(image: Path) -> tuple[int, list[int]]:
    truth = stored_array(load_image(image), "gts")
    index = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(axis=1)))
    return index, [int(v) for v in box_from_mask(truth[index] > 0)]


def write_slab(image: Path, before: int, after: int, target: Path) -> Path:
    """The slices of a MedSAM npz from `before` below to `after` above its key slice, as an npz
    with the same pixels, ground truth, spacing and direction, its origin moved to the first kept slice."""
    volume = load_image(image)
    key, _ = key_slice_box(image)
    first, last = key - before, key + after + 1
    assert 0 <= first and last <= volume.shape[0], (image, key)
    np.savez_compressed(
        target,
        imgs=volume.array[first:last],
        gts=stored_array(volume, "gts")[first:last],
        spacing=np.asarray(volume.spacing),
        direction=np.asarray(volume.direction),
        origin=volume.index_to_world([first, 0, 0])[0],
    )
    return target


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, ct_lesion_cases: list[Path]) -> Manifests:
    folder = tmp_path_factory.mktemp("manifest")
    images = {
        name: write_slab(source, *SLABS[name], folder / f"{source.stem}_slab.npz")
        for name, source in zip(REAL_CASES, ct_lesion_cases)
    }
    (z1, box1), (z2, box2), (z15, box15) = (key_slice_box(images[name]) for name in REAL_CASES)
    prompts = {"objects": [{"id": 1, "name": "lesion", "prompts": [{"slice": z2, "box": box2}]}]}
    (folder / "c02_prompts.json").write_text(json.dumps(prompts))
    rows = [
        {"id": "c01", "image": str(images["c01"]), "box": ",".join(map(str, [z1, *box1])), "gt": str(images["c01"])},
        {"id": "missing", "image": str(folder / "not_there.nii.gz"), "box": "3,10,10,40,40"},
        {"id": "c02", "image": str(images["c02"]), "prompts": "c02_prompts.json", "gt": str(images["c02"]), "format": "nii.gz"},
        {"id": "badbox", "image": str(images["c02"]), "box": f"{z2},100,100,600,200"},
        {"id": "badgt", "image": str(images["c02"]), "box": ",".join(map(str, [z2, *box2])), "gt": str(images["c01"])},
        {"id": "c15", "image": str(images["c15"]), "box": ",".join(map(str, [z15, *box15])), "gt": str(images["c15"]), "model": "lite-medsam"},
    ]
    with (folder / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "box", "prompts", "gt", "model", "format"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "cases.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Manifests(folder, folder / "cases.csv", folder / "cases.jsonl", images)


def children(parents: set[int], title_part: str) -> dict[int, str]:
    """pid -> command line (or process title) of the processes whose parent is in `parents` and
    whose title holds `title_part`: this test's own processes, never anyone else's."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):  # not a process, or one that just ended
            continue
        if parent in parents and title_part in title:
            found[int(entry.name)] = title
    return found


def wait_for(condition, what: str, driver: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert driver.poll() is None, driver.communicate()[0]
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.2)


@dataclass
class StoppedAndResumed:
    stopped: Run
    masks_after_stop: dict[str, tuple[int, int]]  # name -> (inode, mtime_ns)
    resumed: Run
    killed_worker: int  # the resumed run's worker process, killed mid-case


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, manifests: Manifests) -> StoppedAndResumed:
    """One worker; SIGTERM to the driver once a case is recorded; then the same command again,
    whose worker process is killed while it segments a case (half a second after the bad rows,
    which precede the last real case and take milliseconds, are recorded: the driver hands out c15
    as it records them, and c15 takes seconds)."""
    out = tmp_path_factory.mktemp("local")
    journal = out / "results.jsonl"
    command = batch_command(manifests.csv, out, "--workers", "1")
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any(r["status"] == "ok" for r in read_journal(journal)), "a case recorded", driver)
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=TIMEOUT_S)[0]
    stopped = Run(out, read_journal(journal), driver.returncode, output)
    masks = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (out / "masks").iterdir()}
    again = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: set(BAD_CASES) <= {r["case_id"] for r in read_journal(journal)}, "bad rows recorded", again)
    time.sleep(KILL_AFTER_S)
    (killed,) = children({again.pid}, "from multiprocessing.spawn import spawn_main")
    os.kill(killed, signal.SIGKILL)
    output = again.communicate(timeout=TIMEOUT_S)[0]
    resumed = Run(out, read_journal(journal), again.returncode, output)
    return StoppedAndResumed(stopped, masks, resumed, killed)


@dataclass
class RayRun(Run):
    killed: int
    actors_before_kill: set[int]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, manifests: Manifests) -> RayRun:
    """The JSONL manifest on a local 2-CPU Ray cluster this module starts; once a worker has been
    busy for `KILL_AFTER_S` (so mid-case: the bad rows take milliseconds), its process is killed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no report to Ray's servers from a test
        context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        out = tmp_path_factory.mktemp("ray")
        address = context.address_info["gcs_address"]
        driver = subprocess.Popen(
            batch_command(manifests.jsonl, out, "--engine", "ray", "--ray-address", address),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        busy_since: dict[int, float] = {}
        killed, before = 0, set()
        deadline = time.monotonic() + TIMEOUT_S
        while driver.poll() is None and not killed:
            assert time.monotonic() < deadline, "no Ray worker got busy in time"
            raylets = children({os.getpid()}, "/ray/core/src/ray/raylet/raylet")
            actors = children(set(raylets), "ray::CaseRunner")
            now = time.monotonic()
            busy_since = {pid: busy_since.get(pid, now) for pid, title in actors.items() if title.endswith(".run")}
            long_busy = [pid for pid, since in busy_since.items() if now - since > KILL_AFTER_S]
            if long_busy:
                killed, before = long_busy[0], set(actors)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        output = driver.communicate(timeout=TIMEOUT_S)[0]
        return RayRun(out, read_journal(out / "results.jsonl"), driver.returncode, output, killed, before)
    finally:
        ray.shutdown()


def written_mask(path: Path, image: Path) -> np.ndarray:
    """A mask batch wrote, checked to carry the geometry of its image."""
    volume = load_image(image)
    if path.suffix == ".npz":  # a MedSAM-style npz holds `segs` and the geometry, no image
        with np.load(path) as npz:
            for key in ("spacing", "origin", "direction"):
                np.testing.assert_allclose(npz[key], getattr(volume, key))
            return npz["segs"]
    mask = load_mask(path)
    check_same_geometry(volume, mask, what=str(path))
    return mask.array


def results_table(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def test_sigterm_midway_then_rerun_loses_no_case_and_computes_none_twice(local_run: StoppedAndResumed) -> None:
    stopped, resumed = local_run.stopped, local_run.resumed
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.output
    assert "stopped by SIGTERM" in stopped.output
    recorded_first = [record["case_id"] for record in stopped.records]
    assert recorded_first and set(recorded_first) < {*REAL_CASES, *BAD_CASES}, "the stop was not midway"
    # The first run's records stay as they were; the rerun adds exactly the cases they lacked.
    assert resumed.records[: len(stopped.records)] == stopped.records
    assert Counter(record["case_id"] for record in resumed.records) == Counter({*REAL_CASES, *BAD_CASES})
    # Masks written before the stop were not written again.
    for name, identity in local_run.masks_after_stop.items():
        path = resumed.out / "masks" / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, name
    assert resumed.returncode == 1, resumed.output  # the bad rows failed
    # The rerun's worker, killed after recording the bad rows, was replaced, and the case it was
    # running (the last one) done by its replacement.
    killed = f":{local_run.killed_worker}"
    rerun_records = resumed.records[len(stopped.records) :]
    assert {r["case_id"] for r in rerun_records if r["worker"].endswith(killed)} >= set(BAD_CASES) - set(recorded_first)
    assert rerun_records[-1]["case_id"] == "c15" and rerun_records[-1]["status"] == "ok"
    assert not rerun_records[-1]["worker"].endswith(killed)
    assert f"{len(set(recorded_first))} done earlier" in resumed.output


def test_results_table_masks_and_scores(local_run: StoppedAndResumed, manifests: Manifests) -> None:
    out = local_run.resumed.out
    table = results_table(out)
    assert list(table) == ["c01", "missing", "c02", "badbox", "badgt", "c15"]  # manifest order
    for case_id, fragment in BAD_CASES.items():
        assert table[case_id]["status"] == "failed" and fragment in table[case_id]["error"]
        assert table[case_id]["output"] == ""
    assert not [path for path in (out / "masks").iterdir() if path.name.startswith(".")], "temporary files left"
    for case_id in REAL_CASES:
        row = table[case_id]
        assert row["status"] == "ok" and row["error"] == "" and float(row["seconds"]) > 0
        suffix = ".nii.gz" if case_id == "c02" else ".npz"
        assert row["output"] == f"masks/{case_id}{suffix}"
        image = load_image(manifests.images[case_id])
        mask = written_mask(out / row["output"], manifests.images[case_id])
        truth = stored_array(image, "gts")
        assert float(row["dsc"]) == pytest.approx(dice(mask, truth), abs=1e-4)
        assert float(row["nsd"]) == pytest.approx(nsd(mask, truth, image.spacing, 2.0), abs=1e-4)
        assert float(row["dsc"]) > 0.7, case_id  # one key-slice box, as in the data's README: 0.77-0.83


def test_rerun_is_idempotent_and_reruns_only_changed_or_retried_rows(local_run: StoppedAndResumed, manifests: Manifests, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_run.resumed.out, out)
    before = read_journal(out / "results.jsonl")
    # What a worker killed while writing a mask leaves: its hidden staging folder.
    staging = out / "masks" / ".c01.npz.k1ll3d"
    staging.mkdir()
    (staging / "c01.npz").write_bytes(b"half a mask")
    runner = CliRunner()
    unchanged = runner.invoke(app, batch_args(manifests.csv, out, "--workers", "1"))
    failed = sum(record["status"] == "failed" for record in {r["case_id"]: r for r in before}.values())
    assert unchanged.exit_code == 1 and failed > 0
    assert f"all 6 cases were run by earlier runs ({failed} failed: --retry-failed runs them again)" in unchanged.output
    assert read_journal(out / "results.jsonl") == before
    assert not staging.exists()
    # Point the missing row at another missing file and give c01 a box outside its slices: only
    # those rows run again; the other failures stay recorded until --retry-failed. c01's earlier
    # mask goes (the masks folder holds what the table lists: it stayed, beside a failed row).
    assert (out / "masks" / "c01.npz").exists()
    c01 = next(row for row in csv.DictReader(manifests.csv.open()) if row["id"] == "c01")
    edited = manifests.csv.read_text().replace("not_there.nii.gz", "still_not_there.nii.gz").replace(c01["box"], "0,100,100,600,200")
    manifest = manifests.folder / "edited.csv"
    manifest.write_text(edited)
    changed = runner.invoke(app, batch_args(manifest, out, "--workers", "1"))
    assert changed.exit_code == 1, changed.output
    assert sorted(r["case_id"] for r in read_journal(out / "results.jsonl")[len(before):]) == ["c01", "missing"]
    assert "still_not_there.nii.gz" in results_table(out)["missing"]["error"]
    assert results_table(out)["c01"]["status"] == "failed" and not (out / "masks" / "c01.npz").exists()
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["c02.nii.gz", "c15.npz"]
    retried = runner.invoke(app, batch_args(manifest, out, "--workers", "1", "--retry-failed"))
    assert retried.exit_code == 1, retried.output
    assert sorted(r["case_id"] for r in read_journal(out / "results.jsonl")[len(before) + 2 :]) == sorted([*BAD_CASES, "c01"])


def test_masks_identical_to_segment_command(local_run: StoppedAndResumed, manifests: Manifests, tmp_path: Path) -> None:
    single = tmp_path / "c02.nii.gz"
    result = CliRunner().invoke(
        app, ["segment", str(manifests.images["c02"]), "--prompts", str(manifests.folder / "c02_prompts.json"), "-o", str(single)]
    )
    assert result.exit_code == 0, result.output
    batch_mask = written_mask(local_run.resumed.out / "masks" / "c02.nii.gz", manifests.images["c02"])
    segment_mask = written_mask(single, manifests.images["c02"])
    assert batch_mask.any() and np.array_equal(batch_mask, segment_mask)


def test_a_mask_prompt_row_segments_as_the_segment_command_does_and_reruns_when_the_mask_changes(manifests: Manifests, tmp_path: Path) -> None:
    """The manifest's mask_prompt column is segment's --mask-prompt (batch had no way to prompt from
    a mask); a mask prompt edited since counts in the case's fingerprint."""
    image = manifests.images["c01"]
    prompt_mask = tmp_path / "prompt.nii.gz"
    save_mask((stored_array(load_image(image), "gts") > 0).astype(np.uint8), load_image(image), prompt_mask)
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"id,image,mask_prompt,gt\nc01,{image},prompt.nii.gz,{image}\n")
    (case,) = read_manifest(manifest)
    settings = BatchSettings(out_dir=tmp_path / "out", output_format="nii.gz")
    result = CaseRunner(settings).run(case)
    assert result.status == "ok", result.error
    assert result.dsc is not None and result.dsc > 0.7
    single = tmp_path / "single.nii.gz"
    segmented = CliRunner().invoke(app, ["segment", str(image), "--mask-prompt", str(prompt_mask), "-o", str(single)])
    assert segmented.exit_code == 0, segmented.output
    batch_mask = written_mask(settings.out_dir / "masks" / "c01.nii.gz", image)
    assert batch_mask.any() and np.array_equal(batch_mask, written_mask(single, image))
    before = fingerprints([case], settings)
    save_mask(np.zeros(load_image(image).shape, np.uint8), load_image(image), prompt_mask)
    os.utime(prompt_mask, ns=(0, 0))  # a change the size alone might not show
    assert fingerprints([case], settings) != before


def test_ray_engine_retries_a_killed_worker_and_matches_the_local_engine(
    ray_run: RayRun, local_run: StoppedAndResumed, manifests: Manifests
) -> None:
    assert ray_run.killed, "no Ray worker was killed"
    assert ray_run.returncode == 1, ray_run.output
    assert "ray worker(s)" in ray_run.output
    # Every case recorded once, the one on the killed worker included: a restarted actor (a process
    # that did not exist at the kill) finished it.
    assert Counter(record["case_id"] for record in ray_run.records) == Counter({*REAL_CASES, *BAD_CASES})
    workers = {int(record["worker"].rsplit(":", 1)[1]) for record in ray_run.records}
    assert workers - ray_run.actors_before_kill, (workers, ray_run.actors_before_kill)
    local, distributed = results_table(local_run.resumed.out), results_table(ray_run.out)
    assert list(local) == list(distributed)
    for case_id in local:
        for column in ("status", "dsc", "nsd", "output", "error"):
            assert local[case_id][column] == distributed[case_id][column], (case_id, column)
    for case_id in REAL_CASES:
        output, image = local[case_id]["output"], manifests.images[case_id]
        assert np.array_equal(written_mask(ray_run.out / output, image), written_mask(local_run.resumed.out / output, image))
