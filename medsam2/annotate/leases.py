"""Leases: a case is worked on by one annotator (or one pre-segmenting process) at a time.

A lease names its holder and an expiry; every action of the holder renews it, and a lease left to
expire (a closed laptop, a killed process) frees the case for the next annotator, who goes on from
everything recorded so far. Taking a lease is one transaction that picks a free case and claims it
with a conditional UPDATE (``... WHERE id = :id AND <still free>``, checked by its row count): on
PostgreSQL the pick is ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent annotators each lock a
different row instead of queueing on one; on SQLite the transaction holds the database's write lock
from its ``BEGIN IMMEDIATE``. Two workers can therefore never hold the same case.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from medsam2.annotate.project import LeaseConflict, Project, check_name
from medsam2.annotate.schema import CaseRow, CaseState, InteractionKind, InteractionRow
from medsam2.errors import InputError, first_line
from medsam2.wording import counted

T = TypeVar("T")

# Cases an annotator may be given, and what a released one goes back to.
QUEUE_STATES = (CaseState.NEW, CaseState.PRESEGMENTED, CaseState.IN_REVIEW)
FINISHED_STATES = (CaseState.ACCEPTED.value, CaseState.REJECTED.value)


def is_free(now: datetime):
    return or_(CaseRow.lease_owner.is_(None), CaseRow.lease_expires <= now)


def running_lease(row: CaseRow, now: datetime) -> tuple[str, datetime] | None:
    """Who holds case `row` and until when, or None: a lease that ran out stays on the row until
    the case is taken again, and shown it would read as held (the case is free)."""
    if row.lease_owner is None or row.lease_expires is None or row.lease_expires <= now:
        return None
    return row.lease_owner, row.lease_expires


def lease_next(project: Project, annotator: str, passing_over: Collection[str] = ()) -> CaseRow | None:
    """Lease the next case to `annotator`, or None when none is free.

    An annotator holding a running lease gets that case back (one case at a time). Otherwise, in
    order: their own case whose lease ran out, others' abandoned reviews, pre-segmented cases, new
    cases; oldest first within each. Cases named in `passing_over` are not offered."""
    check_name(annotator, "annotator")
    now = project.clock()
    with project.transaction() as session:
        held = session.scalars(
            select(CaseRow).where(
                CaseRow.project_id == project.id,
                CaseRow.state == CaseState.IN_REVIEW.value,
                CaseRow.lease_owner == annotator,
                CaseRow.lease_expires > now,
            )
        ).first()
        if held is not None:
            return renew(session, project, held.name, annotator)
        order = case(
            (and_(CaseRow.state == CaseState.IN_REVIEW.value, CaseRow.lease_owner == annotator), 0),
            (CaseRow.state == CaseState.IN_REVIEW.value, 1),
            (CaseRow.state == CaseState.PRESEGMENTED.value, 2),
            else_=3,
        )
        candidate = session.scalars(
            select(CaseRow)
            .where(
                CaseRow.project_id == project.id,
                CaseRow.state.in_([state.value for state in QUEUE_STATES]),
                CaseRow.name.not_in(passing_over),
                is_free(now),
            )
            .order_by(order, CaseRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if candidate is None:
            return None
        if not claim(session, project, candidate, annotator, now):  # cannot happen under the locks above
            raise RuntimeError(f"case {candidate.name} changed while being leased")
        return candidate


def left_by_another(project: Project, row: CaseRow, annotator: str) -> tuple[str, int] | None:
    """Who held case `row` before `annotator` leased it and left it to run out, with the prompts and
    corrections still in force that it carries on from; None when nobody else left work on it. A
    lease that ran out keeps its work, so whoever takes the case over should know it is not fresh."""
    with project.transaction() as session:
        history = session.execute(
            select(InteractionRow.id, InteractionRow.kind, InteractionRow.annotator, InteractionRow.undoes_id)
            .where(InteractionRow.case_id == row.id)
            .order_by(InteractionRow.id)
        ).all()
    leases = [item.annotator for item in history if item.kind == InteractionKind.LEASE.value]
    undone = {item.undoes_id for item in history if item.undoes_id is not None}
    work = [item for item in history if item.kind in (InteractionKind.PROMPT.value, InteractionKind.CORRECTION.value)]
    in_force = sum(item.id not in undone for item in work)
    if len(leases) < 2 or leases[-2] == annotator or in_force == 0:
        return None
    return leases[-2], in_force


def left_by_words(left: tuple[str, int]) -> str:
    """What the queue says of `left_by_another`'s answer, the same in the command and the web panel."""
    return f"left by {left[0]} with {counted(left[1], 'earlier correction')}, which this continues from"


def case_round(session: Session, project: Project, row: CaseRow) -> int:
    """The round a case being leased belongs to: the one that recorded its pre-segmentation (an
    imported mask, the hints' or the first prompt's mask), else the current one. A case leased in
    an earlier round that got no model mask then (given back unopened, released or left to run out
    before any prompt) is segmented by the current round's model, and credited to that round."""
    if row.preseg_mask is not None and row.round_id is not None:
        return row.round_id
    return project.current_round(session).id


def claim(session: Session, project: Project, row: CaseRow, annotator: str, now: datetime) -> bool:
    """Lease case `row` to `annotator` if it is in the queue and nobody holds it (recorded); whether
    it was."""
    claimed = session.execute(
        update(CaseRow)
        .where(CaseRow.id == row.id, CaseRow.state.in_([s.value for s in QUEUE_STATES]), is_free(now))
        .values(
            state=CaseState.IN_REVIEW.value,
            lease_owner=annotator,
            lease_expires=now + project.lease_duration,
            round_id=case_round(session, project, row),
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    if claimed.rowcount != 1:
        return False
    session.add(InteractionRow.on(row, annotator, InteractionKind.LEASE, now))
    return True


def renew(session: Session, project: Project, name: str, annotator: str) -> CaseRow:
    """Check that `annotator` holds the lease on case `name` and extend it; the case row, locked
    until the transaction ends. Every write of an annotator goes through here first."""
    row = project.case(session, name)
    now = project.clock()
    renewed = session.execute(
        update(CaseRow)
        .where(
            CaseRow.id == row.id,
            CaseRow.state == CaseState.IN_REVIEW.value,
            CaseRow.lease_owner == annotator,
            CaseRow.lease_expires > now,
        )
        .values(lease_expires=now + project.lease_duration)
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    if renewed.rowcount != 1:
        raise LeaseConflict(not_held_reason(row, annotator, now))
    return row


# Said by the command line and the web panel alike.
TAKE_A_CASE = "Next case in the web app, `medsam2 annotate queue` on the command line"


def not_held_reason(row: CaseRow, annotator: str, now: datetime) -> str:
    if row.state in FINISHED_STATES:
        return f"case {row.name} is already {row.state} (by {row.finished_by})"
    if row.lease_owner and row.lease_owner != annotator and row.lease_expires > now:
        return f"case {row.name} is leased to {row.lease_owner} until {row.lease_expires:%Y-%m-%d %H:%M} UTC"
    if row.lease_owner == annotator:
        return f"your lease on case {row.name} ran out at {row.lease_expires:%Y-%m-%d %H:%M} UTC; take it again ({TAKE_A_CASE})"
    return f"case {row.name} is not leased to {annotator}; take a case ({TAKE_A_CASE})"


def release(project: Project, name: str, annotator: str) -> CaseRow:
    """Give a case back undecided; whatever was recorded on it stays for the next annotator."""
    with project.transaction() as session:
        row = renew(session, project, name, annotator)
        row.state = (CaseState.PRESEGMENTED if row.preseg_mask else CaseState.NEW).value
        row.lease_owner = row.lease_expires = None
        session.add(InteractionRow.on(row, annotator, InteractionKind.RELEASE, project.clock()))
        return row


def reject(project: Project, name: str, annotator: str, reason: str = "") -> CaseRow:
    """Reject a case leased to `annotator`, or one nobody holds (a case whose image cannot be
    opened is given back at once, so it has no lease to reject it under): it leaves the queue and
    the export."""
    with project.transaction() as session:
        claim(session, project, project.case(session, name), annotator, project.clock())
        row = renew(session, project, name, annotator)
        close(session, row, CaseState.REJECTED, annotator, project.clock(), {"reason": reason})
        return row


def close(session: Session, row: CaseRow, state: CaseState, annotator: str, now: datetime, data: dict) -> None:
    """Record the decision on a case whose lease `annotator` holds, and end the lease."""
    row.state = state.value
    row.finished_at, row.finished_by = now, annotator
    row.lease_owner = row.lease_expires = None
    kind = InteractionKind.ACCEPT if state == CaseState.ACCEPTED else InteractionKind.REJECT
    session.add(InteractionRow.on(row, annotator, kind, now, data=data))


def claim_for_presegmentation(
    project: Project, worker: str, names: list[str] | None = None, skip: list[str] = ()
) -> CaseRow | None:
    """Lease the next new case that has prompt hints (among `names`, if given; not in `skip`) to a
    pre-segmenting process, or None. The case stays new until its pre-segmentation is committed."""
    now = project.clock()
    with project.transaction() as session:
        query = select(CaseRow).where(
            CaseRow.project_id == project.id,
            CaseRow.state == CaseState.NEW.value,
            CaseRow.hints.is_not(None),
            is_free(now),
        )
        if names is not None:
            query = query.where(CaseRow.name.in_(names))
        if skip:
            query = query.where(CaseRow.name.not_in(skip))
        candidate = session.scalars(query.order_by(CaseRow.id).limit(1).with_for_update(skip_locked=True)).first()
        if candidate is None:
            return None
        claimed = session.execute(
            update(CaseRow)
            .where(CaseRow.id == candidate.id, CaseRow.state == CaseState.NEW.value, is_free(now))
            .values(
                lease_owner=worker,
                lease_expires=now + project.lease_duration,
                round_id=case_round(session, project, candidate),
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            raise RuntimeError(f"case {candidate.name} changed while being claimed")
        session.refresh(candidate)
        return candidate


@dataclass(frozen=True)
class Leased(Generic[T]):
    """A case leased and opened, and the cases passed over on the way to it."""

    case: CaseRow
    opened: T
    passed_over: list[str]  # one line per case given back because it could not be opened


def lease_next_openable(project: Project, annotator: str, open_case: Callable[[CaseRow], T]) -> Leased[T] | None:
    """`lease_next`, then `open_case(case)`. A case that cannot be opened (its image missing or
    changed) is given back and passed over for the next one: held, it would stop the annotator on a
    case they cannot work on; left first in the queue, it would come back to every annotator. Each
    one passed over is named, so that someone restores its file or rejects it. None when no case is
    free; an InputError naming them when every free case was passed over."""
    passed_over: dict[str, str] = {}
    while (row := lease_next(project, annotator, passing_over=passed_over)) is not None:
        try:
            return Leased(row, open_case(row), list(passed_over.values()))
        except InputError as error:
            release(project, row.name, annotator)
            passed_over[row.name] = (
                f"case {row.name} cannot be opened ({first_line(error)}); it was given back: restore its file "
                f"or reject it (medsam2 annotate reject PROJECT {row.name} --reason ...)"
            )
    if passed_over:
        raise InputError("; ".join(passed_over.values()))
    return None
