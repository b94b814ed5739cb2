"""The record of a batch: what is done, so a rerun does only what is not.

The output folder holds ``results.jsonl``, a journal the driver appends one line to (and syncs to
disk) as each case finishes, and ``results.csv``, the table rebuilt from it at the end of every run.
The journal is the truth: a case is done when its latest record has the fingerprint of the case as
the manifest and settings give it now and, for a success, its mask is still there. A driver killed
at any moment loses at most the cases it had not recorded (their masks, written atomically before
the record, are simply written again; a worker killed mid-write leaves a hidden staging folder,
removed by the next run); a torn last line is ignored. A lock file keeps two drivers off one folder.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from medsam2.distributed.manifest import Case
from medsam2.distributed.worker import MASKS_FOLDER, BatchSettings, CaseResult
from medsam2.engine.registry import checkpoint_identity
from medsam2.errors import InputError
from medsam2.io.atomic import atomic_write_text, check_output_paths, make_output_folder
from medsam2.io.paths import file_identity
from medsam2.io.writers import mask_files

JOURNAL = "results.jsonl"
TABLE = "results.csv"
LOCK = ".batch.lock"
TABLE_COLUMNS = ("case_id", "status", "dsc", "nsd", "seconds", "output", "image", "model", "worker", "error")


def fingerprints(cases: list[Case], settings: BatchSettings) -> dict[str, str]:
    """Case id -> a digest of everything the case's result depends on: its row (line number aside) and its
    prompts file's content, its mask prompt's and ground truth's size and modification time (a
    corrected one is run or scored again), its effective model (the checkpoint file a preset names now, its size and modification
    time: looked up once per model), memory bank and format, and the batch settings that shape masks
    and scores. (Not the images' content: reading every scan to check for edits would cost a run.)"""
    models = {spec: checkpoint_identity(spec) for spec in {case.model or settings.model for case in cases}}
    digests = {}
    for case in cases:
        prompts_file = case.prompts.prompts_file
        described = {
            "case": {key: value for key, value in asdict(case).items() if key != "line"},
            "prompts_file": _file_digest(prompts_file) if prompts_file is not None else None,
            "mask_prompt": file_identity(case.prompts.mask_prompt) if case.prompts.mask_prompt is not None else None,
            "ground_truth": file_identity(case.gt) if case.gt is not None else None,  # missing: the case fails and says why
            "model": models[case.model or settings.model],
            "memory": case.memory or settings.memory,
            "format": case.output_format or settings.output_format,
            "settings": settings.result_defining(),
        }
        digests[case.case_id] = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return digests


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # missing or unreadable: the case will fail and say why
        return None


class ResultsStore:
    """The journal and table of one output folder; use as a context manager (it holds the lock)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.journal_path = self.out_dir / JOURNAL
        self.table_path = self.out_dir / TABLE
        self.latest: dict[str, dict] = {}
        self._lock_handle: io.TextIOWrapper | None = None
        self._journal: int | None = None  # the journal, opened for appending
        self._created: list[Path] = []

    def __enter__(self) -> ResultsStore:
        # what this run adds, taken away again by `abandon` (files first, then folders, deepest first)
        folders = [self.out_dir / MASKS_FOLDER, self.out_dir, *self.out_dir.parents]
        self._created = [path for path in (self.journal_path, self.out_dir / LOCK, *folders) if not path.exists()]
        make_output_folder(self.out_dir)
        # What would stop the run after its cases were segmented is refused before the first one.
        check_output_paths([], [self.journal_path, self.table_path])
        make_output_folder(self.out_dir / MASKS_FOLDER)
        try:
            self._lock_handle = (self.out_dir / LOCK).open("w")
        except OSError as error:
            raise InputError(f"{self.out_dir}: cannot use as the output folder ({error.strerror})") from None
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise InputError(f"{self.out_dir}: another `medsam2 batch` is writing to this folder") from None
        journal = self.journal_path.read_text(encoding="utf-8") if self.journal_path.exists() else ""
        self.latest = _latest_records(journal)
        self._remove_staging_leftovers()
        try:
            self._journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:
            raise InputError(f"{self.journal_path}: cannot write ({error.strerror})") from None
        if journal and not journal.endswith("\n"):  # torn by a kill mid-write: the next record starts a line of its own
            self._append("\n")
        return self

    def _remove_staging_leftovers(self) -> None:
        """Delete the hidden staging folders (``masks/.<name>.<random>/``) of mask writes cut short by
        a killed worker; their cases were never recorded, so they run again."""
        for staging in (self.out_dir / MASKS_FOLDER).glob(".*.*"):
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        if self._lock_handle is not None:
            self._lock_handle.close()  # releases the lock

    def abandon(self) -> None:
        """Close, and remove the files and folders this run created (a run that could not start
        leaves nothing behind: no half-made folder, no table of pending cases)."""
        self.__exit__()
        for path in self._created:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)

    def is_done(self, case: Case, case_fingerprint: str, retry_failed: bool = False) -> bool:
        record = self.latest.get(case.case_id)
        if record is None or record["fingerprint"] != case_fingerprint:
            return False
        if record["status"] == "ok":  # a .mhd / .nhdr mask is there only with its data file
            return all(path.exists() for path in mask_files(self.out_dir / record["output"]))
        return not retry_failed

    def record(self, result: CaseResult, case: Case, case_fingerprint: str, model: str) -> dict:
        """Append the result to the journal and sync it to disk before returning; then delete the
        mask an earlier run recorded for the case if this result does not replace it (the case
        failed now, or its format changed), so the masks folder holds only what the table lists."""
        assert self._journal is not None, "use ResultsStore as a context manager"
        previous = self.latest.get(result.case_id, {}).get("output")
        previous_files = mask_files(self.out_dir / previous) if previous else []
        record = {
            **asdict(result),
            "image": str(case.image),
            "model": model,
            "fingerprint": case_fingerprint,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._append(json.dumps(record) + "\n")
        self.latest[result.case_id] = record
        if previous and previous != record.get("output"):
            for path in previous_files:
                path.unlink(missing_ok=True)
        return record

    def _append(self, text: str) -> None:
        """Append `text` to the journal, synced to disk. Unbuffered: a full disk fails here, as one line
        naming the journal (not later as a traceback when a buffered file is closed), and what was
        written of the line is cut off again, so the journal holds whole records only."""
        assert self._journal is not None, "use ResultsStore as a context manager"
        size = os.fstat(self._journal).st_size
        data = text.encode("utf-8")
        try:
            while data:
                data = data[os.write(self._journal, data):]
            os.fsync(self._journal)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal, size)
            raise InputError(f"{self.journal_path}: cannot write ({error.strerror or error})") from None

    def write_table(self, cases: list[Case], fingerprints: dict[str, str]) -> Path:
        """``results.csv``: one row per manifest case in manifest order; "pending" where not done."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for case in cases:
            record = self.latest.get(case.case_id)
            if record is None or record["fingerprint"] != fingerprints[case.case_id]:
                record = {"case_id": case.case_id, "status": "pending", "image": str(case.image)}
            writer.writerow({key: _cell(record.get(key)) for key in TABLE_COLUMNS})
        return atomic_write_text(self.table_path, buffer.getvalue())


def _latest_records(journal: str) -> dict[str, dict]:
    """Each case's last record in the journal's text (a line torn by a kill mid-write passed over)."""
    latest: dict[str, dict] = {}
    for line in journal.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write; its case was never recorded
        latest[record["case_id"]] = record
    return latest


def _cell(value: object) -> object:
    """A table cell: floats to 4 decimals, NaN (a score without a defined value) and None empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else value
