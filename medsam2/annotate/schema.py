"""The annotation database: projects, rounds, cases and the interactions recorded on them.

The tables are created and changed only by the Alembic migrations in ``migrations/versions``; these
classes describe the latest revision (a test checks that the two agree on both SQLite and
PostgreSQL).

Times are stored as naive UTC (`UTCDateTime`) so that SQLite, which has no time zones, and
PostgreSQL's ``timestamp`` compare them the same way.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("times stored in the annotation database must be timezone-aware")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class CaseState(str, enum.Enum):
    """Where a case is in the pipeline: new -> presegmented -> in_review -> accepted / rejected."""

    NEW = "new"
    PRESEGMENTED = "presegmented"
    IN_REVIEW = "in_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class InteractionKind(str, enum.Enum):
    """What one recorded interaction was. Prompts, corrections and undos are the annotator's effort;
    the others mark the case's history."""

    LEASE = "lease"  # an annotator took the case
    RELEASE = "release"  # ... and gave it back undecided
    PRESEGMENT = "presegment"  # the model segmented the case from its hints
    PROMPT = "prompt"  # a box or clicks on a slice; the model re-propagates
    CORRECTION = "correction"  # a slice's mask drawn by hand (empty: erased)
    UNDO = "undo"  # takes back the latest prompt or correction still in force
    ACCEPT = "accept"
    REJECT = "reject"


class PresegSource(str, enum.Enum):
    """What a case's pre-segmentation (its first mask, before any correction) came from."""

    HINTS = "hints"  # the model, from the prompt hints imported with the case
    MASK = "mask"  # a mask imported with the case
    FIRST_PROMPT = "first-prompt"  # the model, from the annotator's first prompt


EFFORT_KINDS = (InteractionKind.PROMPT, InteractionKind.CORRECTION, InteractionKind.UNDO)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class ProjectRow(Base):
    """One annotation project; several may share a PostgreSQL database."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    axis: Mapped[str] = mapped_column(String(16))  # slicing axis of every prompt
    window: Mapped[str | None] = mapped_column(String(64))  # CT window; None: by modality
    labels: Mapped[dict] = mapped_column()  # label value (text) -> name
    lease_seconds: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()


class RoundRow(Base):
    """A round of the human-in-the-loop cycle: the model that pre-segments its cases."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("project_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    number: Mapped[int] = mapped_column()
    model: Mapped[str] = mapped_column(String(1000))  # the --model value (absolute for a file)
    model_version: Mapped[str] = mapped_column(String(300))  # NAME@SHA256-PREFIX
    model_sha256: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column()


class CaseRow(Base):
    """One image to annotate, its state, lease and the masks made for it (paths relative to the
    project folder, each with its SHA-256)."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("project_id", "name"), Index("ix_cases_queue", "project_id", "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(255))
    image: Mapped[str] = mapped_column(String(2000))  # absolute path of the file or DICOM folder
    shape: Mapped[list] = mapped_column()  # (Z, Y, X)
    voxels_sha256: Mapped[str | None] = mapped_column(String(64))  # `voxels_sha256`; None: imported before it was kept
    placement: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))  # `placement_of`; None: imported before it was kept
    # Prompts to pre-segment from (`medsam2.annotate.prompts`); SQL NULL when there are none, so
    # queries can find the cases the model can pre-segment.
    hints: Mapped[list | None] = mapped_column(JSON(none_as_null=True))
    state: Mapped[str] = mapped_column(String(16), default=CaseState.NEW.value)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    model_version: Mapped[str | None] = mapped_column(String(300))
    preseg_mask: Mapped[str | None] = mapped_column(String(300))
    preseg_sha256: Mapped[str | None] = mapped_column(String(64))
    preseg_source: Mapped[str | None] = mapped_column(String(16))  # a `PresegSource`
    mask: Mapped[str | None] = mapped_column(String(300))  # the accepted mask
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    initial_dice: Mapped[float | None] = mapped_column(Float)  # pre-segmentation vs accepted mask
    mask_slices: Mapped[int | None] = mapped_column()  # slices the accepted mask covers
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[datetime | None] = mapped_column()
    imported_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    finished_by: Mapped[str | None] = mapped_column(String(200))


class InteractionRow(Base):
    """One thing that happened to a case, by whom and when. ``data`` holds a prompt's box, points
    and labels; ``mask`` a corrected slice (`medsam2.annotate.prompts.pack_mask`)."""

    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    annotator: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    slice_index: Mapped[int | None] = mapped_column()
    obj_id: Mapped[int | None] = mapped_column()
    data: Mapped[dict] = mapped_column(default=dict)
    mask: Mapped[bytes | None] = mapped_column(LargeBinary)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    created_at: Mapped[datetime] = mapped_column()

    @classmethod
    def on(cls, case: CaseRow, annotator: str, kind: InteractionKind, at: datetime, **columns) -> InteractionRow:
        """An interaction on `case`, in the case's round."""
        columns.setdefault("data", {})
        return cls(case_id=case.id, round_id=case.round_id, annotator=annotator, kind=kind.value, created_at=at, **columns)
