"""Viewer sessions: one client's work on one case, and the store that keeps clients apart.

A `ViewerSession` wraps the engine's `Session` with what a viewer needs around it: the case and its
geometry, display windowing, an undo history and the progress of a propagation. Every change to the
engine session runs on its device's worker thread (`medsam2.server.inference`), so changes apply in
the order they were asked for; `lock` keeps readers (mask downloads) from seeing a half-done change.
The summary a client polls is rebuilt after each change and read without the lock, so polling the
progress of a long propagation never waits for it.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from concurrent.futures import Future
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medsam2.engine.api import prepare_slices, slice_warnings
from medsam2.engine.prompts import Prompt
from medsam2.engine.sam2_predictor import memory_propagation
from medsam2.engine.session import Direction, Session, TrackedObject
from medsam2.errors import InputError, first_line
from medsam2.io import SUPPORTED_MASK_SUFFIXES, SliceAxis, Volume, from_slices, load_image, save_mask, to_slices
from medsam2.io.atomic import atomic_new_path
from medsam2.io.writers import check_mask_name
from medsam2.io.volume import reading_step, slice_display, slice_pixel_spacing
from medsam2.io.paths import mask_file_stem
from medsam2.io.masks import label_names, load_mask, states_geometry
from medsam2.io.video import NIFTI_SUFFIXES, Video, is_video, load_video_mask
from medsam2.io.video_writers import mask_sequence_writer
from medsam2.preprocess import WINDOW_PRESETS, apply_window, parse_window, to_uint8
from medsam2.wording import counted
from medsam2.server.cases import Case, check_plain_name, load_frames, mask_name_rival, saved_mask_path
from medsam2.server.errors import Busy, Conflict, NotFound, StaleRevision, UnsupportedMedia
from medsam2.server.inference import DeviceWorker

CLOSED_KEPT = 1000  # closed sessions whose reason the store keeps
# Why a session closed by DELETE /api/sessions/{id} closed: a script's request as well as a page's
# (which closes its session when another case is opened there), so it names neither alone.
CLOSED_BY_CLIENT = "its client closed it (a DELETE request, as a page showing it sends when another case is opened there)"
CaseKind = Literal["volume", "video", "image"]
ProgressState = Literal["idle", "queued", "running", "done", "failed"]
# A download is one file: formats whose header names a second data file (.mhd, .nhdr) are left out.
MASK_FORMATS = tuple(suffix.lstrip(".") for suffix in SUPPORTED_MASK_SUFFIXES if suffix not in (".mhd", ".nhdr"))
# A video's masks are a sequence: npz (key segs) or NIfTI 2D+t, as `medsam2 segment` writes them.
VIDEO_MASK_FORMATS = ("npz", *(suffix.lstrip(".") for suffix in NIFTI_SUFFIXES))


@dataclass(frozen=True)
class Step:
    """A prompt in force, and its object as it was before it (what undo puts back)."""

    prompt: Prompt
    before: TrackedObject | None


@dataclass(frozen=True)
class Progress:
    """Where the latest propagation of a session stands."""

    state: ProgressState = "idle"
    done: int = 0
    total: int = 0
    message: str = ""


def case_kind(volume: Volume, video: Video | None) -> CaseKind:
    """A video when read as one, or a stack of colour frames; one slice is an image; else a volume."""
    if video is not None or (volume.is_color and volume.shape[0] > 1):
        return "video"
    if volume.meta.get("is_2d") or volume.shape[0] == 1:
        return "image"
    return "volume"


def mask_suffix(format_name: str, formats: tuple[str, ...]) -> str:
    """A mask format name (``nii.gz``, ``nrrd``...) as a file suffix, or an error listing `formats`."""
    name = format_name.strip().lower().lstrip(".")
    if name not in formats:
        raise InputError(f"mask format {format_name!r}: choose one of {', '.join(formats)}")
    return "." + name


def scan_mask_formats(volume: Volume) -> tuple[str, ...]:
    """The `MASK_FORMATS` a mask of `volume` can be written in (PNG for one slice, DICOM-SEG for a DICOM image)."""

    def fits(name: str) -> bool:
        try:
            check_mask_name(Path(f"mask.{name}"), volume)
        except InputError:
            return False
        return True

    return tuple(name for name in MASK_FORMATS if fits(name))


class ViewerSession:
    """One case opened by one client, with its engine session (made on the worker, on first use)."""

    def __init__(
        self, client: str, case: Case, axis: SliceAxis, window: str | None, worker: DeviceWorker, memory: str | None
    ):
        self.id = secrets.token_urlsafe(12)
        self.memory = memory  # None: the model has no memory
        self.propagation = None if memory is None else memory_propagation(memory)
        self.client = client
        self.case = case
        self.worker = worker
        self.video: Video | None = None  # closed once its frames are read; kept for writing masks
        with self._named_for_client(case.path, case.name):
            if is_video(case.path):
                self.volume, self.video = load_frames(case.path)
            else:
                self.volume = load_image(case.path)
        # The page's View choice stays set from case to case; a video or a picture has one view.
        self.view_warnings: list[str] = []
        if axis != "axial" and (self.video is not None or self.volume.shape[0] == 1):
            shown = "a video, shown frame by frame" if self.video is not None else "a 2D image, shown as it is"
            self.view_warnings.append(f"{case.name} is {shown}: it has no {axis} view")
            axis = "axial"
        self.axis = axis
        self.mask_formats = VIDEO_MASK_FORMATS if self.video is not None else scan_mask_formats(self.volume)
        # Mapped once here, so the session knows the mapping; prepare_slices then passes the uint8 through.
        mapped = to_uint8(self.volume, window=window)
        self.slices, self.axis_index = prepare_slices(self.volume.with_array(mapped.array), axis)
        self.mapping = mapped.mapping
        self.kind = case_kind(self.volume, self.video)
        self.engine: Session | None = None
        self.lock = threading.Lock()
        self.closed = threading.Event()  # set by `close`: queued and running work stops
        self.closed_because: str | None = None
        self.history: list[Step] = []  # prompts in force, oldest first, for undo
        self.progress = Progress()
        self.last_used = time.monotonic()
        self.pending_jobs: set[Future] = set()  # on its worker, queued or running (`on_worker`)
        self.page_left = False  # its page said it was closed or reloaded (`leave`); any request since clears it
        self.revision = 0  # counts the changes to objects and prompts, for `check_revision`
        self._static = self._describe()
        self._summary = self._summarise()

    # -- what a client sees ----------------------------------------------------------------------

    def _describe(self) -> dict:
        is_hounsfield = self.mapping.modality == "CT" and self.mapping.kind == "window"
        array = self.volume.array
        return {
            "id": self.id,
            "case": self.case.public(),
            "kind": self.kind,
            "fps": self.video.frame_rate if self.video is not None else None,
            "shape": list(self.slices.shape[:3]),
            "axis": self.axis,
            "color": self.volume.is_color,
            # none for a case whose file gives none (a video without calibration, a bare npz)
            "pixel_spacing": list(slice_pixel_spacing(self.volume, self.axis_index)) if self.volume.has_spacing else None,
            "slice_spacing": float(self.volume.spacing[2 - self.axis_index]) if self.volume.has_spacing else None,
            "display": asdict(slice_display(self.volume, self.axis)),
            "patient_frame": (patient_frame := self.video is None and states_geometry(self.volume)),
            "slice_step": reading_step(self.volume, self.axis) if patient_frame else 1,
            "warnings": [*self.view_warnings, *slice_warnings(self.slices, self.axis)],
            "intensity": {**asdict(self.mapping), "value_range": [float(array.min()), float(array.max())]},
            "window_presets": {name: {"width": w, "level": l} for name, (w, l) in WINDOW_PRESETS.items()} if is_hounsfield else {},
            "device": self.worker.device,
            "memory": self.memory,
            "mask_formats": list(self.mask_formats),
        }

    def _summarise(self) -> dict:
        objects = []
        for obj_id, tracked in sorted(self.engine.objects.items() if self.engine else ()):
            prompts = [
                {
                    "slice": index,
                    "box": list(prompt.box) if prompt.box is not None else None,
                    "points": [list(point) for point in prompt.points],
                    "labels": list(prompt.labels),
                    "mask": prompt.mask is not None,
                    "erased": prompt.erases,
                }
                for index, prompt in sorted(tracked.prompts.items())
            ]
            objects.append(
                {
                    "id": obj_id,
                    "name": tracked.name,
                    "prompts": prompts,
                    "slices": sorted(tracked.masks),
                    "needs_propagation": self.engine.needs_propagation(obj_id),
                }
            )
        return {"objects": objects, "undo_steps": len(self.history), "revision": self.revision}

    def _changed(self) -> None:
        self.revision += 1
        self._summary = self._summarise()

    def info(self) -> dict:
        return {**self._static, **self._summary, "progress": asdict(self.progress), "saved_masks": self.saved_masks()}

    def add_warnings(self, lines: list[str]) -> None:
        """Lines to show as the session opens, after those of its view."""
        self._static["warnings"] = [*self._static["warnings"], *lines]

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.page_left = False

    @property
    def unit(self) -> str:
        """What the session's stack is made of, as its messages name it."""
        return "frame" if self.video is not None else "slice"

    @property
    def busy(self) -> bool:
        return self.progress.state in ("queued", "running")

    @property
    def in_use(self) -> bool:
        """Propagating, or with other work on its worker (a first prompt loading the model): not idle."""
        return self.busy or bool(self.pending_jobs)

    # -- changes: called on the worker thread with its predictor -----------------------------------

    def _engine(self, predictor) -> Session:
        if self.engine is None:
            self.engine = Session(self.slices, predictor, self.propagation, unit=self.unit)
        return self.engine

    def open_engine(self, predictor) -> None:
        """Make the engine session now, so that a model which cannot run the session's memory bank
        (LiteMedSAM has none) refuses when the case is opened."""
        with self.lock:
            self._engine(predictor)

    def add_prompt(self, predictor, prompt: Prompt) -> np.ndarray:
        """Apply a prompt; return the object's mask on that slice."""
        self.check_slice(prompt.slice_index)  # no such slice is a 404, as for reading it
        prompt.validate(*self.slices.shape[:3], unit=self.unit)  # on its own: merged with earlier ones, an empty one would pass
        with self.lock:
            engine = self._engine(predictor)
            before = engine.snapshot(prompt.obj_id)
            mask = engine.apply(prompt)
            self.history.append(Step(prompt, before))
            self._changed()
        return mask

    def remove_prompts(self, predictor, slice_index: int, obj_id: int) -> None:
        """Take back every prompt of an object on one slice."""
        with self.lock:
            engine = self._engine(predictor)
            self._check_object(engine, obj_id, slice_index)
            engine.remove_prompt(slice_index, obj_id)
            # The object's earlier states all hold the prompts just removed: undo cannot go back past this.
            self.history = [step for step in self.history if step.prompt.obj_id != obj_id]
            self._changed()

    def undo(self, predictor) -> Prompt:
        """Take back the latest prompt: its object is put back as it was before it (its masks, those
        propagated included, and what waited for propagation), keeping its name."""
        with self.lock:
            if not self.history:
                raise InputError("nothing to undo")
            engine = self._engine(predictor)
            last = self.history.pop()
            obj_id = last.prompt.obj_id
            name = engine.objects[obj_id].name
            engine.restore(obj_id, last.before)
            if obj_id in engine.objects:
                engine.objects[obj_id].name = name
            self._changed()
        return last.prompt

    def delete_object(self, predictor, obj_id: int) -> None:
        with self.lock:
            engine = self._engine(predictor)
            self._check_object(engine, obj_id)
            engine.reset_object(obj_id)
            self.history = [step for step in self.history if step.prompt.obj_id != obj_id]
            self._changed()

    def rename_object(self, predictor, obj_id: int, name: str) -> None:
        with self.lock:
            engine = self._engine(predictor)
            self._check_object(engine, obj_id)
            engine.objects[obj_id].name = name
            self._changed()

    def _check_object(self, engine: Session, obj_id: int, slice_index: int | None = None) -> None:
        """An unknown object (or one not prompted on `slice_index`) is a resource not found: 404."""
        if obj_id not in engine.objects:
            raise NotFound(f"no object {obj_id} in this session (prompt it first)")
        if slice_index is not None and slice_index not in engine.objects[obj_id].prompts:
            raise NotFound(f"object {obj_id} has no prompt on {self.unit} {slice_index}")

    def propagate(self, predictor, direction: Direction, obj_ids: list[int] | None) -> None:
        with self.lock:
            engine = self._engine(predictor)
            if not engine.objects:
                raise InputError(f"nothing to propagate: prompt an object on a {self.unit} first")
            for obj_id in obj_ids or []:  # before the progress changes: a refused request is no run
                self._check_object(engine, obj_id)
            self.progress = Progress("running")

            def advance(done: int, total: int) -> None:
                self.check_open()  # a closed session's propagation stops at the next slice
                self.progress = Progress("running", done, total)

            try:
                engine.propagate(direction, obj_ids, progress=False, on_progress=advance)
            except Exception as error:
                self.progress = Progress("failed", message=first_line(error))
                raise
            finally:
                self._changed()
            self.progress = Progress("done", self.progress.total, self.progress.total)

    def load_mask(self, predictor, path: Path, name: str) -> list[int]:
        """Make the label map in `path` (a mask of this case, in any format a mask of it is written in;
        `name` is how the client knows the file) the session's objects, in place of those it had.
        Each label is an object whose masked slices are all prompted with their masks: they stay as
        they are, and a correction on one of them changes that slice. Returns the object ids."""
        names: dict[int, str] = {}
        with self._named_for_client(path, name):
            if self.video is not None:
                labels = load_video_mask(path)
                if labels.shape != self.slices.shape[:3]:
                    raise InputError(f"{path}: {labels.shape[0]} frames of {labels.shape[2]}x{labels.shape[1]}; the video has {self.slices.shape[0]} of {self.slices.shape[2]}x{self.slices.shape[1]}")
            else:
                mask = load_mask(path, like=self.volume)
                labels, names = to_slices(mask.array, self.axis_index), label_names(mask)
        with self.lock:
            engine = self._engine(predictor)
            try:
                ids = engine.load_labels(labels, names)
            except InputError as error:
                raise InputError(f"{name}: {error}") from None
            self.history = []
            self._changed()
        return ids

    def mask_upload_suffix(self, name: str) -> str:
        """The suffix of a mask file sent to this session, or an error unless it is one of its `mask_formats`."""
        suffix = check_plain_name(name, "mask.nii.gz")
        if suffix.lstrip(".") not in self.mask_formats:
            raise UnsupportedMedia(f"{name}: a mask of {self.case.name} is one of {', '.join(self.mask_formats)}")
        return suffix

    def load_saved_mask(self, predictor, name: str) -> list[int]:
        """`load_mask` for a mask saved beside the case (one of `saved_masks`)."""
        if name not in self.saved_masks():
            raise NotFound(f"no saved mask {name!r} beside {self.case.name} (saved: {', '.join(self.saved_masks()) or 'none'})")
        path = self.case.path.parent / name
        if path.is_symlink():  # as for saving: it may lead out of the data folder
            raise InputError(f"{name}: a symbolic link; the server reads saved masks only from its data folder (load the file itself instead)")
        return self.load_mask(predictor, path, name)

    def close(self, reason: str) -> None:
        """Stop the session's queued and running work; requests still naming it are told `reason`."""
        self.closed_because = reason
        self.closed.set()

    def check_open(self) -> None:
        if self.closed.is_set():
            raise NotFound(f"session {self.id!r} was closed: {self.closed_because}")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """The lock, for a read; refused at once while a propagation holds it. A read waiting out a
        run of minutes would hold one of the server's request threads all along: enough of them
        (a client asking for many slices' masks) and the server answered no one, other users too."""
        while not self.lock.acquire(timeout=0.1):
            if self.progress.state == "running":
                done, total = self.progress.done, self.progress.total
                where = f" ({done} of {total} {self.unit}s)" if total else ""
                raise Busy(f"the session is propagating{where}: its masks can be read when it is done (its progress: GET the session)")
        try:
            yield
        finally:
            self.lock.release()

    def check_revision(self, expected: int | None) -> None:
        """Refuse a change made on a view of the session older than its current state (a second tab
        changed it meanwhile): applied, it would merge into, or undo, work that view never showed."""
        if expected is not None and expected != self.revision:
            raise StaleRevision(
                f"the session changed since revision {expected} (now {self.revision}), by another tab or "
                "request of this client: look at its current state before changing it"
            )

    # -- reads -------------------------------------------------------------------------------------

    def check_slice(self, index: int) -> None:
        if not 0 <= index < self.slices.shape[0]:
            raise NotFound(f"{self.unit} {index} is out of range 0..{self.slices.shape[0] - 1}")

    def display_slice(self, index: int, window: str | None) -> np.ndarray:
        """Slice `index` as uint8 for display: as the model sees it, or through a window (a preset
        or ``W,L`` in the scan's own units; colour frames are shown as they are)."""
        self.check_slice(index)
        if window is None or self.volume.is_color:
            return self.slices[index]
        chosen = parse_window(window)
        return apply_window(to_slices(self.volume.array, self.axis_index)[index], chosen.width, chosen.level)

    def slice_masks(self, index: int) -> dict[int, np.ndarray]:
        """Object id -> (H, W) mask of every object present on slice `index`."""
        self.check_slice(index)
        with self._reading():
            objects = self.engine.objects.items() if self.engine else ()
            return {obj_id: tracked.masks[index] for obj_id, tracked in sorted(objects) if index in tracked.masks}

    def all_masks(self) -> dict[int, dict[int, np.ndarray]]:
        """Slice -> object id -> mask, for every slice holding an object."""
        with self._reading():
            by_slice: dict[int, dict[int, np.ndarray]] = {}
            for obj_id, tracked in sorted(self.engine.objects.items() if self.engine else ()):
                for index, mask in tracked.masks.items():
                    by_slice.setdefault(index, {})[obj_id] = mask
            return dict(sorted(by_slice.items()))

    def label_volume(self) -> np.ndarray:
        """The label map in the scan's own (Z, Y, X) layout; where objects overlap the higher id wins."""
        with self._reading():
            labels = self.engine.result() if self.engine else np.zeros(self.slices.shape[:3], dtype=np.uint16)
        return np.ascontiguousarray(from_slices(labels, self.axis_index))

    def _labels_to_write(self, what: str) -> np.ndarray:
        """`label_volume`, refused while it is empty: a file of zeros would pass for a segmentation."""
        labels = self.label_volume()
        if not labels.any():
            raise InputError(f"nothing to {what}: no object has a mask yet (prompt a {self.unit} first)")
        return labels

    def _write_mask(self, path: Path, labels: np.ndarray) -> Path:
        """`labels` (`label_volume`) written to `path`: in the scan's geometry, or as a video's mask sequence."""
        if self.video is None:
            with self._reading():
                names = {obj_id: tracked.name for obj_id, tracked in self.engine.objects.items()} if self.engine else {}
            return save_mask(labels, like=self.volume, path=path, names=names)
        with mask_sequence_writer(path, self.video, np.uint8 if labels.max(initial=0) < 256 else np.uint16) as write:
            write(labels)
        return path

    @contextmanager
    def _named_for_client(self, path: Path, name: str) -> Iterator[None]:
        """Errors inside name `path` and the case's file as the client knows them, not by server paths."""
        try:
            yield
        except InputError as error:
            message = str(error).replace(str(path), name).replace(str(self.case.path), self.case.name)
            raise InputError(message) from None

    def _write_mask_as_named(self, target: Path, labels: np.ndarray) -> Path:
        with self._named_for_client(target, target.name):
            return self._write_mask(target, labels)

    def mask_file(self, format_name: str) -> tuple[str, bytes]:
        """The whole label map as a file: (file name, content)."""
        name = f"{mask_file_stem(self.case.path)}_mask{mask_suffix(format_name, self.mask_formats)}"
        with tempfile.TemporaryDirectory(prefix="medsam2-mask-") as folder:
            target = Path(folder) / name
            self._write_mask_as_named(target, self._labels_to_write("download"))
            return name, target.read_bytes()

    def saved_masks(self) -> list[str]:
        """The names of masks saved beside the case earlier, in any of its formats."""
        if not self.case.can_save or mask_name_rival(self.case.path) is not None:  # whose would they be?
            return []
        paths = (saved_mask_path(self.case.path, mask_suffix(name, self.mask_formats)) for name in self.mask_formats)
        return [path.name for path in paths if path.exists() or path.is_symlink()]

    def save_mask(self, format_name: str, replace: bool) -> Path:
        """Write the label map next to the case (``<case>_mask.<format>``) and return the path; a mask
        saved there earlier is replaced only when asked (it may hold another session's work)."""
        if not self.case.can_save:
            raise InputError(f"{self.case.name}: masks of {self.case.source} cases are not saved on the server; download the mask instead")
        target = saved_mask_path(self.case.path, mask_suffix(format_name, self.mask_formats))
        rival = mask_name_rival(self.case.path)
        if rival is not None:
            raise InputError(f"{target.name} would also be the saved mask of {rival.name} beside this case: rename one of them, or download the mask instead")
        if target.is_symlink():  # it may lead out of the data folder: the server writes only what is in it
            raise InputError(f"{target.name}: a symbolic link is there; the server does not save through links (download the mask instead)")
        labels = self._labels_to_write("save")
        conflict = Conflict(f"{target.name} was saved earlier; save with replace to overwrite it")
        if replace:
            return self._write_mask_as_named(target, labels)
        if target.exists():
            raise conflict
        try:  # another session may save the same case meanwhile: only one of them lands
            with atomic_new_path(target) as staged, self._named_for_client(staged, target.name):
                self._write_mask(staged, labels)
        except FileExistsError:
            raise conflict from None
        return target


def idle_words(seconds: float) -> str:
    """"5 minutes", "1 minute", "30 seconds": a limit under a minute (a test's) in seconds."""
    return counted(seconds / 60, "minute") if seconds >= 60 else counted(float(seconds), "second")


class SessionStore:
    """Open sessions by id, each visible only to the client that opened it."""

    def __init__(self, max_sessions: int, idle_seconds: float):
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._sessions: dict[str, ViewerSession] = {}
        # Why the sessions closed by the server closed (the latest CLOSED_KEPT), told to a client
        # still naming one: (client, reason) by session id.
        self._closed: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def pick_worker(self, workers: list[DeviceWorker]) -> DeviceWorker:
        """The worker with the fewest sessions, then the shortest queue."""
        with self._lock:
            return min(workers, key=lambda w: (sum(s.worker is w for s in self._sessions.values()), w.pending))

    def add(self, session: ViewerSession) -> list[str]:
        """Keep `session`; when the server is full, an idle session makes room: one of the opening
        client's (a browser's tabs closed without closing their sessions) or one whose page was
        closed (`ViewerSession.page_left`, any client's: it would hold its place for the idle time);
        one without objects first, the client's own before another's, a left page's first, then the
        least recently used. Returns a line for each session closed so."""
        with self._lock:
            self._close_expired()
            idle = [s for s in self._sessions.values() if not s.in_use]
            closable = [s for s in idle if s.client == session.client or s.page_left]
            made_room = []
            if len(self._sessions) >= self.max_sessions and closable:
                chosen = min(
                    closable,
                    key=lambda s: (bool(s.engine and s.engine.objects), s.client != session.client, not s.page_left, s.last_used),
                )
                limit = f"the server holds at most {counted(self.max_sessions, 'session')}"
                if chosen.client == session.client:
                    self._close(chosen, f"{limit}, and its client (a browser, a script) opened another case")
                    made_room.append(f"{limit}: your session of {chosen.case.name} was closed to open this one")
                else:  # not named to this client: another's case is none of its business
                    self._close(chosen, f"{limit}, and its page had been closed when another case was opened")
            if len(self._sessions) >= self.max_sessions:
                raise Busy(f"the server already has {len(self._sessions)} sessions open, its limit; close one or try later")
            self._sessions[session.id] = session
            return made_room

    def close_expired(self) -> None:
        """`_close_expired`, for the server's periodic sweep: a server no request reaches frees them too."""
        with self._lock:
            self._close_expired()

    def _close_expired(self) -> None:
        """Close the sessions idle past the limit. Run at every look-up, not only when making room:
        else an expired session came back to life when next named, and its memory stayed held for
        as long as no one opened another case. A session at work is never idle."""
        now = time.monotonic()
        for expired in [s for s in self._sessions.values() if not s.in_use and now - s.last_used > self.idle_seconds]:
            self._close(expired, f"it was idle for more than {idle_words(self.idle_seconds)}")

    def _close(self, session: ViewerSession, reason: str) -> None:
        self._sessions.pop(session.id, None)
        session.close(reason)
        self._closed[session.id] = (session.client, reason)
        while len(self._closed) > CLOSED_KEPT:
            self._closed.popitem(last=False)

    def get(self, client: str, session_id: str) -> ViewerSession:
        with self._lock:
            self._close_expired()
            session = self._sessions.get(session_id)
            closed = self._closed.get(session_id)
            if session is not None and session.client == client:
                session.touch()  # under the lock: a sweep between the look-up and this would close it
        if closed is not None and closed[0] == client:
            raise NotFound(f"session {session_id!r} was closed: {closed[1]}")
        if session is None or session.client != client:
            raise NotFound(f"no session {session_id!r}")
        return session

    def of_client(self, client: str) -> list[ViewerSession]:
        with self._lock:
            self._close_expired()
            return [s for s in self._sessions.values() if s.client == client]

    def leave(self, client: str, session_id: str) -> None:
        """The session's page was closed or reloaded: its place may go to another case when the
        server is full (`add`); a reloaded page's next request keeps it (`ViewerSession.touch`)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.client == client:
                session.page_left = True

    def remove(self, client: str, session_id: str) -> None:
        session = self.get(client, session_id)
        with self._lock:
            if session_id in self._sessions:
                self._close(session, CLOSED_BY_CLIENT)
