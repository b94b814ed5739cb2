"""Training logs: one CSV row per logged step, and the same scalars for TensorBoard.

A resumed run continues both where its checkpoint was taken: CSV rows and TensorBoard events
written after that step by the interrupted run are dropped, so each step appears once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from medsam2.io.atomic import atomic_write_text

LOG_NAME = "train_log.csv"
TENSORBOARD_DIR = "tensorboard"


class RunLog:
    """CSV at ``OUT/train_log.csv`` and TensorBoard events under ``OUT/tensorboard``; only the main
    process writes them. `columns` after "step" are the scalars; a row may leave some empty."""

    def __init__(self, out_dir: Path, columns: list[str], resume_step: int | None, tensorboard: bool) -> None:
        self.path = out_dir / LOG_NAME
        self.columns = ["step", *columns]
        rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
        atomic_write_text(self.path, self._render(rows, header=True))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events the interrupted run wrote after its checkpoint. A fresh run
            # (the folder holds no resumable run: one stopped before its first checkpoint) starts
            # the events over, as the CSV does, so TensorBoard does not mix the two runs' curves.
            purge = None if resume_step is None else resume_step + 1
            if resume_step is None:
                for old in (out_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
                    old.unlink()
            self.writer = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=purge)

    def write(self, step: int, values: dict[str, float | None]) -> None:
        row = {"step": step, **values}
        with self.path.open("a", newline="") as handle:
            handle.write(self._render([row], header=False))
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _render(self, rows: list[dict], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        return buffer.getvalue()
