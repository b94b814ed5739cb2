"""The annotation project over HTTP: the routes under ``/api/annotate`` and the page's panel script.

`annotation_router(folder)` gives an `APIRouter` for `medsam2.server.create_app(settings,
routers=[...])`; without a folder every route answers 404 (no project) and the panel stays hidden,
so the page can always load the panel script. Routes are plain functions (FastAPI runs them in its
thread pool); an annotator's `WorkSession` stays open between requests, so a prompt costs only the
slices it changes. Errors follow the server's convention, ``{"error": "one line"}``: 404 for an
unknown case, 409 for a case that is not the annotator's (lease), 400 for other bad input.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import defer

from medsam2.annotate.effort import effort_report, render_rounds_png
from medsam2.annotate.leases import lease_next_openable, left_by_another, left_by_words, reject, release, running_lease
from medsam2.annotate.project import Project, open_project
from medsam2.annotate.schema import CaseRow, InteractionRow
from medsam2.annotate.work import Predictors, WorkSession, covered_slices
from medsam2.engine.prompts import MAX_CLICKS, MAX_OBJECT_ID
from medsam2.errors import InputError
from medsam2.io.overlay import as_shown, overlay_slice
from medsam2.io.volume import SliceDisplay, slice_pixel_spacing
from medsam2.server.schemas import error_responses

PANEL_SCRIPT = Path(__file__).parent / "static" / "panel.js"
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
ANNOTATION_ERRORS = error_responses({
    400: "bad input: a prompt, a mask or a value the project cannot use",
    404: "no annotation project on this server, no such case, or nothing finished yet",
    409: "the case is leased to another annotator, or already accepted or rejected",
    415: "a body of the wrong type",
    422: "a request that does not match the schema",
})  # fmt: skip


class NoProject(InputError):
    status_code = 404


class NothingYet(InputError):
    status_code = 404


class AnnotatorIn(BaseModel):
    annotator: str = Field(description="Who is working (letters, digits, . _ @ + -).")


class PromptIn(AnnotatorIn):
    slice: int = Field(strict=True, description="Slice index along the project's axis.")
    obj_id: int = Field(1, ge=1, le=MAX_OBJECT_ID, strict=True, description="The object's label value.")
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="x1, y1, x2, y2 in slice pixels.")
    points: list[list[float]] = Field(default_factory=list, max_length=MAX_CLICKS, description="Clicks [[x, y], ...].")
    labels: list[int] = Field(default_factory=list, max_length=MAX_CLICKS, description="1 object, 0 background, one per click.")


class CorrectionIn(AnnotatorIn):
    slice: int = Field(strict=True, description="Slice index along the project's axis.")
    obj_id: int = Field(1, ge=1, le=MAX_OBJECT_ID, strict=True, description="The object's label value.")
    mask: dict = Field(description='The slice\'s mask drawn by hand, COCO RLE {"size": [H, W], "counts": [...]}; empty erases.')


class RejectIn(AnnotatorIn):
    reason: str = ""


class LeftBy(BaseModel):
    annotator: str = Field(description="Who held the case before and let the lease run out.")
    corrections: int = Field(description="Their prompts and corrections still in force, which the case continues from.")
    said: str = Field(description="The sentence `annotate queue` prints of it.")


class CaseOut(BaseModel):
    name: str
    state: str
    shape: list[int]
    slices: int | None = Field(None, description="Slices along the project's axis (open work only).")
    axis: str
    lease_owner: str | None = Field(description="Who holds the case now (none once a lease ran out).")
    lease_expires: str | None
    preseg_source: str | None
    model_version: str | None
    masked_slices: list[int] = Field(default_factory=list, description="Slices the current mask covers (open work only).")
    interactions: int | None = Field(None, description="Prompts and corrections in force (open work only; the history lists all).")
    slice_shape: list[int] | None = Field(None, description="Rows and columns of a slice in its own pixels, those of prompts (open work only).")
    display: SliceDisplay | None = Field(
        None,
        description="How the slice PNGs are turned from the slice's own pixels (they are also stretched to square millimetres; open work only).",
    )
    slice_step: Literal[1, -1] | None = Field(
        None, description="The slice-number change from one slice to the next in reading order, as the viewer's `slice_step` (open work only)."
    )
    passed_over: list[str] = Field(
        default_factory=list, description="Cases given back on the way to this one because they could not be opened (queue only)."
    )
    left_by: LeftBy | None = Field(None, description="Work another annotator left on the case (queue only; none when it is fresh).")


class AnnotationService:
    """The project and the annotators' open work sessions (at most `max_open`, least recently used
    closed first; one request at a time per case)."""

    def __init__(self, folder: Path, device: str = "cpu", max_open: int = 8):
        self.project: Project = open_project(folder)
        self.predictors = Predictors(device)
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, str], WorkSession] = OrderedDict()
        self._guard = threading.Lock()
        self._case_locks: dict[str, threading.Lock] = {}

    def case_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._case_locks.setdefault(name, threading.Lock())

    def work(self, name: str, annotator: str) -> WorkSession:
        """The annotator's open session on a case: the one kept while it still shows the record
        (the lease held, nothing recorded elsewhere since), else opened anew from the record, which
        checks the lease (a view of a case someone else now holds is refused, one a command changed
        is rebuilt as it now stands)."""
        key = (name, annotator)
        with self._guard:
            work = self._open.get(key)
        if work is not None and work.lost is None and work.is_current():
            with self._guard:
                self._open.move_to_end(key)
            return work
        work = WorkSession(self.project, name, annotator, self.predictors)
        with self._guard:
            self._open[key] = work
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return work

    def act(self, name: str, annotator: str, action: Callable[[WorkSession], object]) -> CaseOut:
        """Do `action` on the annotator's session of the case, and keep the model's mask it leaves:
        the commands then need no model for this state of the case."""
        with self.case_lock(name):
            work = self.work(name, annotator)
            action(work)
            work.model.remember()
            return self.describe(work.case, work)

    def forget(self, name: str) -> None:
        with self._guard:
            for key in [k for k in self._open if k[0] == name]:
                del self._open[key]

    def describe(self, row: CaseRow, work: WorkSession | None = None) -> CaseOut:
        owner, expires = running_lease(row, self.project.clock()) or (None, None)
        out = CaseOut(
            name=row.name,
            state=row.state,
            shape=list(row.shape),
            axis=self.project.settings.axis,
            lease_owner=owner,
            lease_expires=None if expires is None else expires.isoformat(),
            preseg_source=row.preseg_source,
            model_version=row.model_version,
        )
        if work is not None:
            labels = work.model.slice_labels()
            out.slices = labels.shape[0]
            out.masked_slices = [int(i) for i in covered_slices(labels)]
            out.interactions = len(work.model.active)
            out.slice_shape = list(labels.shape[1:])
            out.display = work.model.display
            out.slice_step = work.model.slice_step
        return out


def annotation_router(folder: Path | None, device: str = "cpu") -> APIRouter:
    """Routes over the project in `folder`, opened now so that a wrong folder stops the server from
    starting (None: no project; the routes answer 404)."""
    opened = AnnotationService(folder, device) if folder is not None else None

    @asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if opened is not None:
                opened.project.close()

    router = APIRouter(tags=["annotation"], lifespan=lifespan, responses=ANNOTATION_ERRORS)

    def service() -> AnnotationService:
        if opened is None:
            raise NoProject("this server has no annotation project (start it with `medsam2 serve --annotate PROJECT`)")
        return opened

    @router.get("/annotate/panel.js", include_in_schema=False)
    def panel_script() -> FileResponse:
        return FileResponse(PANEL_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @router.get(
        "/api/annotate/status",
        summary="Cases per state, running leases, rounds",
        description='`{"project": {...}}`, or `{"project": null}` when this server has no annotation project.',
    )
    def status() -> dict:
        return {"project": None if opened is None else asdict(opened.project.status())}

    @router.post("/api/annotate/queue", response_model=CaseOut, summary="Lease the next case to an annotator",
                 responses={204: {"description": "no case is free"}})
    def queue(body: AnnotatorIn, svc: AnnotationService = Depends(service)):
        def open_case(row: CaseRow) -> WorkSession:
            with svc.case_lock(row.name):
                return svc.work(row.name, body.annotator)

        leased = lease_next_openable(svc.project, body.annotator, open_case)
        if leased is None:
            return Response(status_code=204)
        with svc.case_lock(leased.case.name):
            out = svc.describe(leased.opened.case, leased.opened)
        out.passed_over = leased.passed_over
        if (left := left_by_another(svc.project, leased.case, body.annotator)) is not None:
            out.left_by = LeftBy(annotator=left[0], corrections=left[1], said=left_by_words(left))
        return out

    @router.get("/api/annotate/cases/{name}", summary="A case's record and history")
    def case(name: str, svc: AnnotationService = Depends(service)) -> dict:
        with svc.project.transaction() as session:
            row = svc.project.case(session, name)
            history = session.scalars(
                select(InteractionRow)
                .where(InteractionRow.case_id == row.id)
                .order_by(InteractionRow.id)
                .options(defer(InteractionRow.mask))
            )
            events = [
                {"id": i.id, "kind": i.kind, "annotator": i.annotator, "at": i.created_at.isoformat(),
                 "slice": i.slice_index, "obj_id": i.obj_id, "undoes": i.undoes_id}
                for i in history
            ]
        return {"case": svc.describe(row).model_dump(), "history": events}

    @router.get("/api/annotate/cases/{name}/slices/{index}.png", responses=PNG, summary="A slice with the current mask's contours")
    def slice_png(name: str, index: int, annotator: str = Query(...), svc: AnnotationService = Depends(service)) -> Response:
        with svc.case_lock(name):
            work = svc.work(name, annotator)
            if not 0 <= index < work.model.slices.shape[0]:
                raise InputError(f"slice {index} out of range 0..{work.model.slices.shape[0] - 1}")
            tile = overlay_slice(work.model.slices[index], work.model.slice_labels()[index])
        buffer = io.BytesIO()
        shown = as_shown(tile, work.model.display, slice_pixel_spacing(work.model.volume, work.model.axis_index))
        shown.save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.post("/api/annotate/cases/{name}/prompts", response_model=CaseOut, summary="A box and/or clicks; re-propagates")
    def prompt(name: str, body: PromptIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        points = [tuple(p) for p in body.points]
        if any(len(p) != 2 for p in points):
            raise InputError("points: each click needs two numbers [x, y]")
        box = tuple(body.box) if body.box else None
        return svc.act(name, body.annotator, lambda work: work.add_prompt(body.slice, body.obj_id, box=box, points=points, labels=body.labels))

    @router.post("/api/annotate/cases/{name}/corrections", response_model=CaseOut, summary="A slice drawn by hand")
    def correction(name: str, body: CorrectionIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        from medsam2.server.rle import decode

        return svc.act(name, body.annotator, lambda work: work.add_correction(body.slice, body.obj_id, decode(body.mask, work.model.slice_hw)))

    @router.post("/api/annotate/cases/{name}/undo", response_model=CaseOut, summary="Take back the latest prompt or correction")
    def undo(name: str, body: AnnotatorIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        return svc.act(name, body.annotator, WorkSession.undo)

    @router.post("/api/annotate/cases/{name}/accept", response_model=CaseOut, summary="Accept the current mask")
    def accept(name: str, body: AnnotatorIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        with svc.case_lock(name):
            row = svc.work(name, body.annotator).accept()
            svc.forget(name)
            return svc.describe(row)

    @router.post("/api/annotate/cases/{name}/reject", response_model=CaseOut, summary="Reject the case")
    def reject_case(name: str, body: RejectIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        with svc.case_lock(name):
            row = reject(svc.project, name, body.annotator, body.reason)
            svc.forget(name)
            return svc.describe(row)

    @router.post("/api/annotate/cases/{name}/release", response_model=CaseOut, summary="Give the case back undecided")
    def release_case(name: str, body: AnnotatorIn, svc: AnnotationService = Depends(service)) -> CaseOut:
        with svc.case_lock(name):
            row = release(svc.project, name, body.annotator)
            svc.forget(name)
            return svc.describe(row)

    @router.get("/api/annotate/report", summary="Effort per case and per round")
    def report(svc: AnnotationService = Depends(service)) -> dict:
        return asdict(effort_report(svc.project))

    @router.get("/api/annotate/report.png", responses=PNG, summary="The effort plot across rounds")
    def report_png(svc: AnnotationService = Depends(service)) -> Response:
        rounds = effort_report(svc.project).rounds
        if not rounds:
            raise NothingYet("no case is finished yet: there is no effort to plot")
        return Response(render_rounds_png(rounds), media_type="image/png", headers={"Cache-Control": "no-store"})

    return router
