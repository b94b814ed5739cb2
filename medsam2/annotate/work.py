"""An annotator's work on a case: pre-segmentation, prompts, hand corrections, undo, accept, reject.

The database record of a case is its whole state. `WorkSession` rebuilds the engine session from it
(the hint prompts, then every prompt still in force, in order) and records each new action before
reporting it done, so any process, or another annotator after a lease ran out, can go on from
exactly where the last one stopped.

The mask a case shows is the engine's result with *slice overrides* on top: a hand-drawn slice (a
correction, possibly empty to erase a slice), and every slice of an imported mask, replace the
model's mask of that object on that slice. A prompt on a slice hands the slice back to the model
(it removes the override of that object there), so the latest action on a slice decides it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DBSession
from tqdm.auto import tqdm

from medsam2.annotate.leases import claim_for_presegmentation, close, reject, renew
from medsam2.annotate.project import LeaseConflict, Project, check_name, model_identity
from medsam2.annotate.prompts import pack_mask, prompt_from_json, prompt_to_json, unpack_mask
from medsam2.annotate.schema import (
    EFFORT_KINDS,
    CaseRow,
    CaseState,
    InteractionKind,
    InteractionRow,
    PresegSource,
    RoundRow,
)
from medsam2.annotate.images import load_case_image
from medsam2.annotate.store import load_stored_mask, recall_result, remember_result, store_mask
from medsam2.engine.api import prepare_slices
from medsam2.engine.prompts import Prompt
from medsam2.engine.session import Session
from medsam2.errors import InputError
from medsam2.io import Volume, from_slices, to_slices
from medsam2.io.masks import states_geometry
from medsam2.io.volume import reading_step, slice_display
from medsam2.metrics import dice

Override = tuple[int, int]  # (slice index, object id)


class Predictors:
    """The models of a project's rounds, each loaded once, checked against the checksum its round
    recorded (a checkpoint changed since is refused: the record would no longer say what made the
    masks)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._loaded: dict[str, object] = {}
        self._loading = threading.Lock()  # a server's threads share one instance

    def get(self, round_row: RoundRow):
        with self._loading:
            return self._load(round_row)

    def _load(self, round_row: RoundRow):
        if round_row.model_version not in self._loaded:
            from medsam2.engine.models import load_predictor
            from medsam2.engine.registry import split_preset

            checkpoint = split_preset(round_row.model)[1]
            if os.path.isabs(checkpoint) and not os.path.exists(checkpoint):
                raise InputError(
                    f"{checkpoint}: the checkpoint of round {round_row.number} is not there (if it moved, point the "
                    "project at its new place: medsam2 annotate relocate PROJECT OLD_FOLDER NEW_FOLDER)"
                )
            identity = model_identity(round_row.model, check_builds=False)  # built just below
            if identity.sha256 != round_row.model_sha256:
                raise InputError(
                    f"round {round_row.number}: model {round_row.model} has changed since the round began "
                    f"(SHA-256 {identity.sha256[:12]}..., recorded {round_row.model_sha256[:12]}...)"
                )
            self._loaded[round_row.model_version] = load_predictor(round_row.model, device=self.device)
        return self._loaded[round_row.model_version]


@dataclass(frozen=True)
class CaseSnapshot:
    """What the record says of a case when a session opens it."""

    case: CaseRow
    round: RoundRow
    active: list[InteractionRow]  # prompts and corrections in force, oldest first
    last_event: int | None  # id of the case's latest interaction of any kind
    last_effort: InteractionRow | None  # its latest prompt, correction or undo: with the round, what the masks depend on


class CaseModel:
    """A case's image, engine session and slice overrides, rebuilt from its record (no lease
    needed: it only computes). Coordinates are those of the project's slicing axis.

    The engine session is replayed on first use: reading the case's mask takes the model's part of
    it from the result remembered for this very record (`remember`), when there is one, so that the
    commands that only look, correct or accept run no model."""

    def __init__(
        self, project: Project, snapshot: CaseSnapshot, predictors: Predictors, progress: bool = False, volume: Volume | None = None
    ):
        self.project = project
        self.case = snapshot.case
        self.round = snapshot.round
        self.progress = progress
        self.volume = load_case_image(self.case) if volume is None else volume  # given: read by the caller with load_case_image
        self.slices, self.axis_index = prepare_slices(self.volume, project.settings.axis, project.settings.window)
        self.display = slice_display(self.volume, project.settings.axis)  # how people see the slices
        self.slice_step = reading_step(self.volume, project.settings.axis) if states_geometry(self.volume) else 1
        self._predictors = predictors
        self.base: dict[Override, np.ndarray] = {}
        if self.case.preseg_source == PresegSource.MASK.value:
            imported = to_slices(load_stored_mask(project.folder, self.case.preseg_mask, self.case.preseg_sha256), self.axis_index)
            self.base = split_by_slice(imported)
        self.active = list(snapshot.active)
        self.overrides = self.current_overrides()
        self.last_effort = snapshot.last_effort  # kept up to date by the work session's actions
        self._remembered = recall_result(project.folder, self.case.id, self.record_stamp(), self.slices.shape[:3])

    @cached_property
    def _replayed(self) -> tuple[Session, list[Prompt]]:
        """The engine session the record leaves (the hints the model takes, then every prompt in
        force, as live), and those hints."""
        session = Session(self.slices, self._predictors.get(self.round))
        hints = []
        for hint in (prompt_from_json(h) for h in self.case.hints or []):
            try:
                session.apply(hint)
            except InputError:  # the model finds nothing from this hint; the annotator starts by hand
                continue
            hints.append(hint)
        for interaction in self.active:
            if interaction.kind == InteractionKind.PROMPT.value:
                prompt = stored_prompt(interaction)
                if session.refines_propagated_mask(prompt):  # live, every prompt was followed by a propagation
                    self._propagate(session)
                session.apply(prompt)
        self._propagate(session)
        self._remembered = None  # the session is what the record says from now on
        return session, hints

    @property
    def session(self) -> Session:
        return self._replayed[0]

    @property
    def hints(self) -> list[Prompt]:
        return self._replayed[1]

    def propagate(self) -> None:
        self._propagate(self.session)

    def _propagate(self, session: Session) -> None:
        if session.objects:
            session.propagate(progress=self.progress)

    def model_labels(self) -> np.ndarray:
        """(slices, H, W) the model's label map, before the overrides."""
        if self._remembered is not None:
            return self._remembered.copy()
        if self._unprompted:
            return np.zeros(self.slices.shape[:3], dtype=np.uint16)
        return self.session.result()

    @property
    def _unprompted(self) -> bool:
        """No hint, no prompt in force and no session yet (an imported mask, hand corrections): the
        model's part of the mask is empty, known without the model."""
        prompted = self.case.hints or any(i.kind == InteractionKind.PROMPT.value for i in self.active)
        return not prompted and "_replayed" not in self.__dict__

    def remember(self) -> None:
        """Keep the model's label map for the record as it stands (best effort: a project folder
        that cannot take it only costs the next command a replay). An unprompted case has nothing to
        keep: it is rebuilt without the model."""
        if self._unprompted:
            return
        remember_result(self.project.folder, self.case.id, self.record_stamp(), self.model_labels())

    def record_stamp(self) -> str:
        """What names the state of the case's record the model's mask depends on, across projects
        too (ids start again in a project made anew in the same folder, or a database restored):
        the case's import, its round's model and its latest prompt, correction or undo, with times."""
        def moment(at: datetime) -> str:  # as written or as read back (a database may drop the time zone)
            return at.replace(tzinfo=None).isoformat()

        effort = "none" if self.last_effort is None else f"{self.last_effort.id} at {moment(self.last_effort.created_at)}"
        return (
            f"case {self.case.id} imported {moment(self.case.imported_at)} voxels {self.case.voxels_sha256}; "
            f"round {self.round.id} model {self.round.model_sha256}; latest effort {effort}"
        )

    def forget_session(self) -> None:
        """Drop the engine session: the next use replays the record as it now stands."""
        self.__dict__.pop("_replayed", None)
        self._remembered = None

    def current_overrides(self) -> dict[Override, np.ndarray]:
        """The slice overrides the active interactions leave: the imported mask's and corrections',
        each dropped by a later prompt on its slice and object."""
        overrides = dict(self.base)
        for interaction in self.active:
            key = (interaction.slice_index, interaction.obj_id)
            if interaction.kind == InteractionKind.CORRECTION.value:
                overrides[key] = unpack_mask(interaction.mask, self.slice_hw)
            else:
                overrides.pop(key, None)
        return overrides

    @property
    def slice_hw(self) -> tuple[int, int]:
        return self.slices.shape[1], self.slices.shape[2]

    def slice_labels(self) -> np.ndarray:
        """(slices, H, W) label map in slice coordinates."""
        labels = self.model_labels()
        for (index, obj_id), mask in self.overrides.items():
            plane = labels[index]
            plane[plane == obj_id] = 0
            plane[mask] = obj_id
        return labels

    def labels(self) -> np.ndarray:
        """(Z, Y, X) label map in the image's own layout."""
        return np.ascontiguousarray(from_slices(self.slice_labels(), self.axis_index))


def covered_slices(labels: np.ndarray) -> np.ndarray:
    """Indices of the slices (along the first axis) where a label map is not empty."""
    return np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))


def split_by_slice(labels: np.ndarray) -> dict[Override, np.ndarray]:
    """Every (slice, label) of a label map in slice coordinates, as slice masks."""
    masks = {}
    for index in covered_slices(labels):
        for value in np.unique(labels[index]):
            if value:
                masks[int(index), int(value)] = labels[index] == value
    return masks


def stored_prompt(interaction: InteractionRow) -> Prompt:
    return prompt_from_json({"slice": interaction.slice_index, "obj_id": interaction.obj_id, **interaction.data})


def read_snapshot(project: Project, session: DBSession, case: CaseRow) -> CaseSnapshot:
    round_id = case.round_id or project.current_round(session).id
    interactions = list(
        session.scalars(
            select(InteractionRow)
            .where(InteractionRow.case_id == case.id, InteractionRow.kind.in_([k.value for k in EFFORT_KINDS]))
            .order_by(InteractionRow.id)
        )
    )
    undone = {i.undoes_id for i in interactions if i.undoes_id is not None}
    active = [i for i in interactions if i.kind != InteractionKind.UNDO.value and i.id not in undone]
    last_effort = interactions[-1] if interactions else None
    return CaseSnapshot(case, session.get(RoundRow, round_id), active, last_event(session, case), last_effort)


def last_event(session: DBSession, case: CaseRow) -> int | None:
    return session.scalar(select(func.max(InteractionRow.id)).where(InteractionRow.case_id == case.id))


class WorkSession:
    """`annotator`'s work on case `name`, which they must hold the lease of; every action checks
    and renews the lease before it is recorded. A session whose lease was lost refuses further
    actions (open a new one after `lease_next`)."""

    def __init__(
        self, project: Project, name: str, annotator: str, predictors: Predictors, progress: bool = False, volume: Volume | None = None
    ):
        """`volume`: the case's image when the caller has read it already (to check its input
        before the case is rebuilt, which takes seconds to minutes)."""
        self.project = project
        self.annotator = check_name(annotator, "annotator")
        with project.transaction() as session:
            case = renew(session, project, name, annotator)
            snapshot = read_snapshot(project, session, case)
        self.model = CaseModel(project, snapshot, predictors, progress, volume)
        self.seen = snapshot.last_event
        self.lost: str | None = None
        if self.case.preseg_mask is None and self.case.hints and not self.model.active and self.model.hints:
            self._presegment_from_hints()

    def is_current(self) -> bool:
        """Whether this session still shows the record: its annotator holds the lease and nothing was
        recorded on the case elsewhere since (a command, another tab). Read only: no lease renewed."""
        with self.project.transaction() as session:
            case = self.project.case(session, self.name)
            held = case.state == CaseState.IN_REVIEW.value and case.lease_owner == self.annotator and case.lease_expires > self.project.clock()
            return held and last_event(session, case) == self.seen

    @property
    def case(self) -> CaseRow:
        return self.model.case

    @property
    def name(self) -> str:
        return self.case.name

    def labels(self) -> np.ndarray:
        """The case's current (Z, Y, X) label map."""
        return self.model.labels()

    # -- actions ---------------------------------------------------------------------------------

    def add_prompt(
        self,
        slice_index: int,
        obj_id: int = 1,
        *,
        box: tuple[float, float, float, float] | None = None,
        points: list[tuple[float, float]] | None = None,
        labels: list[int] | None = None,
        name: str | None = None,
    ) -> InteractionRow:
        """A box and/or clicks on one slice; the model re-segments the slice and re-propagates."""
        self._check_open()
        self.project.settings.check_label(obj_id, f"prompt on slice {slice_index}")
        prompt = Prompt(
            slice_index,
            obj_id,
            box=None if box is None else tuple(float(v) for v in box),
            points=tuple((float(x), float(y)) for x, y in points or ()),
            labels=tuple(int(v) for v in labels or ()),
            name=name,
        )
        if prompt.box is None and not prompt.points:
            raise InputError(f"prompt on slice {slice_index}: give a box or clicks")
        self.model.session.apply(prompt)
        self.model.propagate()
        data = {k: v for k, v in prompt_to_json(prompt).items() if k not in ("slice", "obj_id")}
        first_model_mask = self.case.preseg_mask is None
        return self._record_effort(InteractionKind.PROMPT, slice_index, obj_id, data, None, first_model_mask)

    def add_correction(self, slice_index: int, obj_id: int, mask: np.ndarray) -> InteractionRow:
        """Object `obj_id`'s mask on one slice, drawn by hand (all False erases it there)."""
        self._check_open()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.model.slice_hw:
            raise InputError(f"correction on slice {slice_index}: mask shape {mask.shape} differs from the slice's {self.model.slice_hw}")
        if not 0 <= slice_index < self.model.slices.shape[0]:
            raise InputError(f"correction: slice {slice_index} out of range 0..{self.model.slices.shape[0] - 1}")
        self.project.settings.check_label(obj_id, f"correction on slice {slice_index}")
        data = {"pixels": int(mask.sum())}
        return self._record_effort(InteractionKind.CORRECTION, slice_index, obj_id, data, mask, False)

    def apply_edit(self, labels: np.ndarray, slices: list[int] | None = None) -> int:
        """Take a (Z, Y, X) label map edited in another tool: each slice (of `slices`, if given;
        indices along the project's axis) where it differs from the current mask is recorded as hand
        corrections, one per object changed there. Returns how many were recorded."""
        self._check_open()
        labels = np.asarray(labels)
        if labels.shape != self.model.volume.shape:
            raise InputError(f"case {self.name}: the edited mask has shape {labels.shape}, the image {self.model.volume.shape}")
        edited = to_slices(labels, self.model.axis_index)
        for index in slices or []:
            if not 0 <= index < edited.shape[0]:
                raise InputError(f"case {self.name}: slice {index} out of range 0..{edited.shape[0] - 1}")
        current = self.model.slice_labels()
        changed = np.flatnonzero((edited != current).reshape(edited.shape[0], -1).any(axis=1))
        corrections = [
            (int(index), int(obj_id))
            for index in (changed if slices is None else [i for i in changed if i in slices])
            for obj_id in np.union1d(np.unique(edited[index]), np.unique(current[index]))
            if obj_id and not np.array_equal(edited[index] == obj_id, current[index] == obj_id)
        ]
        for index, obj_id in corrections:  # all checked before any is recorded
            self.project.settings.check_label(obj_id, f"case {self.name}: the edited mask on slice {index}")
        for index, obj_id in corrections:
            self.add_correction(index, obj_id, edited[index] == obj_id)
        return len(corrections)

    def undo(self) -> InteractionRow:
        """Take back the latest prompt or correction still in force."""
        self._check_open()
        if not self.model.active:
            raise InputError(f"case {self.name}: nothing to undo")
        undone = self.model.active[-1]
        key = (undone.slice_index, undone.obj_id)
        row = self._record_effort(InteractionKind.UNDO, *key, {"undoes": undone.kind}, None, False, undoes=undone)
        if undone.kind == InteractionKind.PROMPT.value:
            # Replayed, as any later process will rebuild the case: taking the prompt out of the live
            # session would leave the others on its slice given without the propagation before them.
            self.model.forget_session()
        return row

    def accept(self, labels: np.ndarray | None = None) -> CaseRow:
        """Accept the current mask, or `labels` (a (Z, Y, X) label map edited elsewhere: every slice
        where it differs from the current mask is recorded as a hand correction first)."""
        self._check_open()
        final = self.labels() if labels is None else labels
        if not final.any():  # before an edit is recorded: a refused accept leaves the case as it was
            raise InputError(f"case {self.name}: the mask is empty; reject the case instead of accepting nothing")
        if labels is not None:
            self.apply_edit(labels)
            final = self.labels()
        path, digest = store_mask(self.project.folder, final, self.model.volume)
        preseg = None
        if self.case.preseg_mask is not None:
            preseg = load_stored_mask(self.project.folder, self.case.preseg_mask, self.case.preseg_sha256)
        with self._holding() as (session, case):
            case.mask, case.mask_sha256 = path, digest
            case.initial_dice = None if preseg is None else dice(preseg, final)
            case.mask_slices = len(covered_slices(to_slices(final, self.model.axis_index)))
            close(session, case, CaseState.ACCEPTED, self.annotator, self.project.clock(), {"mask": path})
        self.model.case = case
        self.lost = f"case {self.name} is accepted"
        return case

    def reject(self, reason: str = "") -> CaseRow:
        """Reject the case (`medsam2.annotate.leases.reject`); the session closes."""
        self._check_open()
        try:
            row = reject(self.project, self.name, self.annotator, reason)
        finally:
            self.lost = f"case {self.name} is closed"
        self.model.case = row
        return row

    # -- recording -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.lost is not None:
            raise LeaseConflict(f"{self.lost}; this work session is closed")

    def _record_effort(
        self,
        kind: InteractionKind,
        slice_index: int,
        obj_id: int,
        data: dict,
        mask: np.ndarray | None,
        first_model_mask: bool,
        undoes: InteractionRow | None = None,
    ) -> InteractionRow:
        preseg = store_mask(self.project.folder, self.labels(), self.model.volume) if first_model_mask else None
        with self._holding() as (session, case):
            row = InteractionRow.on(
                case,
                self.annotator,
                kind,
                self.project.clock(),
                slice_index=slice_index,
                obj_id=obj_id,
                data=data,
                mask=None if mask is None else pack_mask(mask),
                undoes_id=None if undoes is None else undoes.id,
            )
            session.add(row)
            if preseg is not None:
                self._set_presegmentation(case, preseg, PresegSource.FIRST_PROMPT)
        if kind == InteractionKind.UNDO:
            self.model.active.remove(undoes)
        else:
            self.model.active.append(row)
        self.model.overrides = self.model.current_overrides()
        self.model.last_effort = row
        return row

    def _presegment_from_hints(self) -> None:
        """Record the model's mask from the hints of a case leased before `presegment` reached it."""
        preseg = store_mask(self.project.folder, self.labels(), self.model.volume)
        with self._holding() as (session, case):
            self._set_presegmentation(case, preseg, PresegSource.HINTS)
            data = {"hints": len(self.model.hints)}
            session.add(InteractionRow.on(case, self.annotator, InteractionKind.PRESEGMENT, self.project.clock(), data=data))

    def _set_presegmentation(self, case: CaseRow, stored: tuple[str, str], source: PresegSource) -> None:
        case.preseg_mask, case.preseg_sha256 = stored
        case.preseg_source = source.value
        case.model_version = self.model.round.model_version
        self.model.case = case

    @contextmanager
    def _holding(self) -> Iterator[tuple[DBSession, CaseRow]]:
        """A transaction in which this session's annotator holds the case's lease and the record is
        still the one this session was built from (the same annotator may work in two places).
        Otherwise the work session closes: its state in memory is no longer the record's."""
        with self.project.transaction() as session:
            try:
                case = renew(session, self.project, self.name, self.annotator)
                if last_event(session, case) != self.seen:
                    raise LeaseConflict(f"case {self.name} was changed elsewhere since this work session opened; open it again")
            except InputError as error:
                self.lost = str(error)
                raise
            yield session, case
            session.flush()
            self.seen = last_event(session, case)
            self.model.case = case  # with the lease just renewed


@dataclass
class PresegmentReport:
    done: list[str]
    failed: dict[str, str]  # case -> why (the case stays new, for an annotator to start by hand)


def presegment(project: Project, predictors: Predictors, names: list[str] | None = None, progress: bool = True) -> PresegmentReport:
    """Pre-segment every new case that has prompt hints (or those of `names`) with its round's
    model. Safe to run in several processes at once: each case is claimed before it is computed."""
    worker = f"presegment@{socket.gethostname()}:{os.getpid()}"
    with project.transaction() as session:
        for name in names or []:
            project.case(session, name)  # an unknown name is an error, not silently nothing
    report = PresegmentReport([], {})
    with tqdm(desc="pre-segmenting", unit="case", disable=not progress) as bar:
        while (case := claim_for_presegmentation(project, worker, names, skip=list(report.failed))) is not None:
            try:
                with project.transaction() as session:
                    snapshot = read_snapshot(project, session, case)
                model = CaseModel(project, snapshot, predictors)
                labels = model.labels()
                if not labels.any():
                    raise InputError("the model found nothing from its hints")
                stored = store_mask(project.folder, labels, model.volume)
                model.remember()  # the annotator who opens the case first then waits for no model
            except InputError as error:
                report.failed[case.name] = str(error)
                _commit_presegmentation(project, case, worker, None, None)
            except BaseException:
                # Ctrl-C or SIGTERM: the claim would keep the case from the next presegment run,
                # and from every annotator, until its lease ran out, with nothing saying why.
                _commit_presegmentation(project, case, worker, None, None)
                raise
            else:
                if _commit_presegmentation(project, case, worker, stored, snapshot.round):
                    report.done.append(case.name)
            bar.update(1)
    return report


def _commit_presegmentation(
    project: Project, case: CaseRow, worker: str, stored: tuple[str, str] | None, round_row: RoundRow | None
) -> bool:
    """Record a pre-segmentation (or, with `stored` None, give the claim back); False when the
    claim ran out and the case has been taken meanwhile."""
    with project.transaction() as session:
        row = session.scalars(select(CaseRow).where(CaseRow.id == case.id).with_for_update()).one()
        if row.lease_owner != worker or row.state != CaseState.NEW.value:
            return False
        row.lease_owner = row.lease_expires = None
        if stored is None:
            # The claim put the case in the current round; with nothing recorded on it, it is in
            # none yet, so a `round` started before the next try pre-segments it with its new model
            # (and the report credits that one), not with the model that failed or was stopped.
            if session.scalar(select(func.count()).where(InteractionRow.case_id == row.id)) == 0:
                row.round_id = None
            return False
        row.preseg_mask, row.preseg_sha256 = stored
        row.preseg_source = PresegSource.HINTS.value
        row.model_version = round_row.model_version
        row.state = CaseState.PRESEGMENTED.value
        session.add(InteractionRow.on(row, worker, InteractionKind.PRESEGMENT, project.clock(), data={"hints": len(row.hints or [])}))
        return True
