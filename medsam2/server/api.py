"""The REST API under /api: cases, sessions, slices, prompts, propagation, masks.

Routes that use the model queue their work on the session's device worker and wait for it without
holding a server thread; the others are plain functions run in FastAPI's thread pool.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from medsam2 import __version__
from medsam2.errors import InputError
from medsam2.io.overlay import LABEL_COLOURS
from medsam2.preprocess import WINDOW_PRESETS
from medsam2.server import rle
from medsam2.server.cases import SNIFF_BYTES, UPLOAD_SUFFIXES, check_signature, check_upload_name
from medsam2.server.errors import MAX_JSON_BODY, PayloadTooLarge, UnsupportedMedia, declared_length, memory_for_case
from medsam2.server.schemas import (
    ERROR_RESPONSES,
    CaseInfo,
    LoadIn,
    OpenSession,
    PromptIn,
    PromptResult,
    PropagateIn,
    RenameIn,
    SavedMask,
    SaveIn,
    ServerInfo,
    SessionInfo,
    SliceMasks,
    VolumeMasks,
)
from medsam2.server.sessions import Progress, ViewerSession
from medsam2.server.state import ServerState

T = TypeVar("T")
router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
# A file sent as the raw request body (uploads are streamed, not parsed as forms).
RAW_FILE_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def client_id(request: Request) -> str:
    return request.state.client_id


def viewer_session(session_id: str, request: Request) -> ViewerSession:
    return server_state(request).sessions.get(client_id(request), session_id)


def if_match(
    if_match: str | None = Header(
        None,
        description="the session's `revision` this change was made on (optionally quoted, as an ETag): "
        "a 412 if the session has changed since. Without it, the change applies to whatever the session holds.",
    ),
) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()):  # "²" is a digit to str.isdigit, not to int()
        raise InputError(f"If-Match {if_match!r}: give the session's revision, a whole number")
    return int(value)


async def on_worker(session: ViewerSession, job: Callable[[object], T], revision: int | None = None) -> T:
    """Run `job(predictor)` on the session's device worker, after the jobs queued before it (not
    at all if the session is closed by then, or changed since `revision`: changes run one at a time
    on the worker, so the check and the change see the same state)."""

    def run(predictor: object) -> T:
        session.check_open()
        session.check_revision(revision)
        try:
            return job(predictor)
        finally:  # idle time counts from the end of the work: a long propagation used the session all along
            session.last_used = time.monotonic()  # not `touch`: a page left meanwhile stays left

    future = session.worker.submit(run)
    session.pending_jobs.add(future)
    future.add_done_callback(session.pending_jobs.discard)
    return await asyncio.wrap_future(future)


def png_response(array: np.ndarray, cache: str) -> Response:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": cache})


# -- server and cases ------------------------------------------------------------------------------


@router.get("/info", response_model=ServerInfo, summary="What this server runs")
def info(state: ServerState = Depends(server_state)) -> dict:
    return {
        "version": __version__,
        "model": state.settings.model,
        "model_description": state.inference.description,
        "devices": list(state.settings.devices),
        "max_upload_bytes": state.settings.max_upload_bytes,
        "upload_formats": [suffix.lstrip(".") for suffix in UPLOAD_SUFFIXES],
        "window_presets": WINDOW_PRESETS,
        "label_colours": LABEL_COLOURS,
        "memory_banks": list(state.memory_banks),
    }


@router.get("/cases", response_model=list[CaseInfo], summary="List the cases that can be opened")
def list_cases(state: ServerState = Depends(server_state)) -> list[dict]:
    return [case.public() for case in state.catalog.list()]


@router.post(
    "/cases",
    status_code=201,
    response_model=CaseInfo,
    summary="Upload a scan",
    description=(
        "Send the file as the raw request body with `Content-Type: application/octet-stream` and its file "
        "name in `name`. The size limit is checked as the body arrives, the format's signature on its first "
        "bytes, and the whole file is read as a scan before it becomes a case.\n\n"
        "`curl --data-binary @scan.nii.gz -H 'Content-Type: application/octet-stream' "
        "'http://127.0.0.1:8000/api/cases?name=scan.nii.gz'`"
    ),
    openapi_extra=RAW_FILE_BODY,
)
async def upload_case(
    request: Request,
    name: str = Query(..., description="file name with its format suffix, e.g. scan.nii.gz"),
    state: ServerState = Depends(server_state),
) -> dict:
    name, suffix = check_upload_name(name)
    async with received_file(request, name, suffix, state) as staged:
        with memory_for_case(name):
            case = await run_in_threadpool(state.catalog.admit, staged, name)
    return case.public()


@asynccontextmanager
async def received_file(request: Request, name: str, suffix: str, state: ServerState) -> AsyncIterator[Path]:
    """The raw request body in a staged file, deleted afterwards. Its type, size limit and format's
    signature are checked as it arrives, so a wrong upload is refused before it is stored."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/octet-stream":
        # Also what keeps other web sites out: a cross-site form cannot send this type.
        raise UnsupportedMedia(f"{name}: send the file as the raw body with Content-Type: application/octet-stream")
    limit = state.settings.max_upload_bytes
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"{name}: {declared} bytes is over the upload limit of {limit} bytes")
    received = 0

    def counted(chunk: bytes) -> bytes:
        nonlocal received
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"{name}: over the upload limit of {limit} bytes")
        return chunk

    body = request.stream().__aiter__()
    head = b""
    async for chunk in body:  # the first bytes decide whether anything is written at all
        head += counted(chunk)
        if len(head) >= SNIFF_BYTES:
            break
    if not head:
        raise InputError(f"{name}: the upload is empty")
    check_signature(name, suffix, head)
    staged = state.catalog.staging_file(suffix)
    try:
        with staged.open("wb") as handle:
            handle.write(head)
            async for chunk in body:
                handle.write(counted(chunk))
        yield staged
    finally:
        staged.unlink(missing_ok=True)


# -- sessions --------------------------------------------------------------------------------------


@router.get("/sessions", response_model=list[SessionInfo], summary="Your open sessions")
def list_sessions(request: Request, state: ServerState = Depends(server_state)) -> list[dict]:
    return [session.info() for session in state.sessions.of_client(client_id(request))]


@router.post("/sessions", status_code=201, response_model=SessionInfo, summary="Open a case", max_body_size=MAX_JSON_BODY)
async def open_session(body: OpenSession, request: Request, state: ServerState = Depends(server_state)) -> dict:
    case = state.catalog.get(body.case)
    worker = state.sessions.pick_worker(state.inference.workers)
    # A model without memory (LiteMedSAM) reports none for the default, and refuses another choice
    # when the case is opened, not at the first prompt.
    memory = None if not state.memory_banks and body.memory == "recent" else body.memory
    with memory_for_case(case.name):
        session = await run_in_threadpool(ViewerSession, client_id(request), case, body.axis, body.window, worker, memory)
    if memory not in (None, "recent"):  # waits behind other sessions' work on the worker, holding no thread
        await asyncio.wrap_future(worker.submit(session.open_engine))
    session.add_warnings(state.sessions.add(session))
    return session.info()


@router.get("/sessions/{session_id}", response_model=SessionInfo, summary="A session: objects, prompts, progress")
def get_session(session: ViewerSession = Depends(viewer_session)) -> dict:
    return session.info()


@router.post("/sessions/{session_id}/leave", status_code=204, summary="Say the session's page was closed or reloaded")
def leave_session(session_id: str, request: Request, state: ServerState = Depends(server_state)) -> Response:
    # Sent by the page as it goes (a beacon: no answer is read), so any session id is taken quietly.
    state.sessions.leave(client_id(request), session_id)
    return Response(status_code=204)


@router.delete("/sessions/{session_id}", status_code=204, summary="Close a session")
def close_session(session_id: str, request: Request, state: ServerState = Depends(server_state)) -> Response:
    state.sessions.remove(client_id(request), session_id)
    return Response(status_code=204)


@router.get(
    "/sessions/{session_id}/slices/{index}",
    response_class=Response,
    responses=PNG,
    summary="A slice (or frame) as PNG",
)
def get_slice(
    index: int,
    window: str | None = Query(None, description="display window: a CT preset or 'W,L' in the scan's units; default: as the model sees it"),
    session: ViewerSession = Depends(viewer_session),
) -> Response:
    # A slice's image for a given window never changes within a session.
    return png_response(session.display_slice(index, window), "private, max-age=3600")


# -- prompts and propagation -----------------------------------------------------------------------


@router.post("/sessions/{session_id}/prompts", response_model=PromptResult, summary="Prompt an object on a slice", max_body_size=MAX_JSON_BODY)
async def add_prompt(
    body: PromptIn, session: ViewerSession = Depends(viewer_session), revision: int | None = Depends(if_match)
) -> dict:
    prompt = body.to_prompt(session.slices.shape[1:3])
    mask = await on_worker(session, lambda predictor: session.add_prompt(predictor, prompt), revision)
    return {"mask": rle.encode(mask), "session": session.info()}


@router.delete(
    "/sessions/{session_id}/prompts/{index}", response_model=SessionInfo, summary="Remove an object's prompts on a slice"
)
async def remove_prompts(
    index: int,
    obj_id: int = Query(1, ge=1),
    session: ViewerSession = Depends(viewer_session),
    revision: int | None = Depends(if_match),
) -> dict:
    await on_worker(session, lambda predictor: session.remove_prompts(predictor, index, obj_id), revision)
    return session.info()


@router.post("/sessions/{session_id}/undo", response_model=SessionInfo, summary="Take back the latest prompt")
async def undo(session: ViewerSession = Depends(viewer_session), revision: int | None = Depends(if_match)) -> dict:
    await on_worker(session, session.undo, revision)
    return session.info()


@router.patch("/sessions/{session_id}/objects/{obj_id}", response_model=SessionInfo, summary="Rename an object", max_body_size=MAX_JSON_BODY)
async def rename_object(
    obj_id: int, body: RenameIn, session: ViewerSession = Depends(viewer_session), revision: int | None = Depends(if_match)
) -> dict:
    await on_worker(session, lambda predictor: session.rename_object(predictor, obj_id, body.name), revision)
    return session.info()


@router.delete("/sessions/{session_id}/objects/{obj_id}", response_model=SessionInfo, summary="Delete an object")
async def delete_object(
    obj_id: int, session: ViewerSession = Depends(viewer_session), revision: int | None = Depends(if_match)
) -> dict:
    await on_worker(session, lambda predictor: session.delete_object(predictor, obj_id), revision)
    return session.info()


@router.post(
    "/sessions/{session_id}/propagate",
    response_model=SessionInfo,
    max_body_size=MAX_JSON_BODY,
    summary="Propagate objects through the slices",
    description="Answers when propagation is done; meanwhile GET /api/sessions/{session_id} reports its progress.",
)
async def propagate(
    body: PropagateIn | None = Body(None),
    session: ViewerSession = Depends(viewer_session),
    revision: int | None = Depends(if_match),
) -> dict:
    body = body or PropagateIn()
    previous = session.progress
    if not session.busy:
        session.progress = Progress("queued")
    try:
        await on_worker(session, lambda predictor: session.propagate(predictor, body.direction, body.obj_ids), revision)
    finally:
        if session.progress.state == "queued":  # never ran (cancelled, or refused before starting): as it was
            session.progress = previous
    return session.info()


# -- masks -----------------------------------------------------------------------------------------


@router.get("/sessions/{session_id}/masks", response_model=VolumeMasks, summary="Every object's mask on every slice, as RLE")
def get_masks(session: ViewerSession = Depends(viewer_session)) -> dict:
    return {
        "shape": list(session.slices.shape[:3]),
        "slices": [
            {"slice": index, "objects": {obj_id: rle.encode(mask) for obj_id, mask in objects.items()}}
            for index, objects in session.all_masks().items()
        ],
    }


@router.get(
    "/sessions/{session_id}/masks/{index}",
    response_model=SliceMasks,
    responses=PNG,
    summary="The masks on one slice: RLE per object, or a PNG label map",
    description="`format=png` gives one 8/16-bit PNG whose pixel values are object ids (where objects overlap, the higher id).",
)
def get_slice_masks(
    index: int,
    format: str = Query("rle", pattern="^(rle|png)$"),
    session: ViewerSession = Depends(viewer_session),
):
    masks = session.slice_masks(index)
    if format == "rle":
        return {"slice": index, "objects": {obj_id: rle.encode(mask) for obj_id, mask in masks.items()}}
    labels = np.zeros(session.slices.shape[1:3], dtype=np.uint16 if max(masks, default=0) > 255 else np.uint8)
    for obj_id, mask in masks.items():
        labels[mask] = obj_id
    return png_response(labels, "no-store")


@router.get(
    "/sessions/{session_id}/mask-file",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the label map file"}},
    summary="Download the whole label map in the scan's geometry",
)
def download_mask(
    format: str = Query("nii.gz", description="one of the session's mask_formats"),
    session: ViewerSession = Depends(viewer_session),
) -> Response:
    name, content = session.mask_file(format)
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f"attachment; filename*=utf-8''{quote(name)}"},
    )


@router.put(
    "/sessions/{session_id}/mask-file",
    response_model=SessionInfo,
    summary="Load a label map file into the session",
    description=(
        "The file (a mask of this case in one of the session's `mask_formats`, sent as the raw body with "
        "`Content-Type: application/octet-stream`, its name in `name`) replaces the session's objects: each "
        "label becomes an object, prompted on every slice it covers with its mask there, so the masks stay as "
        "they are until a slice is corrected. Undo steps start afresh.\n\n"
        "`curl -X PUT --data-binary @mask.nii.gz -H 'Content-Type: application/octet-stream' "
        "'http://127.0.0.1:8000/api/sessions/ID/mask-file?name=mask.nii.gz'`"
    ),
    openapi_extra=RAW_FILE_BODY,
)
async def upload_mask(
    request: Request,
    name: str = Query(..., description="file name with its format suffix, e.g. mask.nii.gz"),
    session: ViewerSession = Depends(viewer_session),
    state: ServerState = Depends(server_state),
    revision: int | None = Depends(if_match),
) -> dict:
    suffix = session.mask_upload_suffix(name)
    async with received_file(request, name, suffix, state) as staged:
        await on_worker(session, lambda predictor: session.load_mask(predictor, staged, name), revision)
    return session.info()


@router.post(
    "/sessions/{session_id}/load",
    response_model=SessionInfo,
    max_body_size=MAX_JSON_BODY,
    summary="Load a mask saved beside the case",
    description="As PUT mask-file, for one of the session's `saved_masks`.",
)
async def load_saved(
    body: LoadIn, session: ViewerSession = Depends(viewer_session), revision: int | None = Depends(if_match)
) -> dict:
    await on_worker(session, lambda predictor: session.load_saved_mask(predictor, body.file), revision)
    return session.info()


@router.post("/sessions/{session_id}/save", response_model=SavedMask, summary="Save the label map next to the case", max_body_size=MAX_JSON_BODY)
def save(body: SaveIn | None = Body(None), session: ViewerSession = Depends(viewer_session)) -> dict:
    request = body or SaveIn()
    return {"file": session.save_mask(request.format, request.replace).name}
