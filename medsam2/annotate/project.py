"""Annotation projects: a folder holding the masks and a pointer to the database, and the database
holding the cases, rounds and every interaction.

``PROJECT/medsam2-project.json`` names the project and its database (an SQLite file in the folder by
default, or a PostgreSQL URL); ``PROJECT/files/`` holds the masks by content. Several annotators on
several machines share one project through a PostgreSQL database and a shared folder.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from medsam2.annotate import db
from medsam2.annotate.schema import CaseRow, CaseState, ProjectRow, RoundRow
from medsam2.engine.prompts import MAX_OBJECT_ID
from medsam2.engine.registry import DEFAULT_MODEL
from medsam2.errors import InputError, UnavailableError
from medsam2.io import SliceAxis
from medsam2.io.atomic import atomic_write_text
from medsam2.io.training_set import file_sha256

PROJECT_FILE = "medsam2-project.json"
DEFAULT_DB = "project.db"
AXES = ("axial", "coronal", "sagittal")
# Annotator names and case names appear in file names, URLs and command lines.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")

Clock = Callable[[], datetime]


class UnknownCase(InputError):
    """No such case in the project (a web front end answers 404)."""

    status_code = 404


class LeaseConflict(InputError):
    """The case is not the annotator's to change now (a web front end answers 409)."""

    status_code = 409


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ProjectSettings:
    """What every annotator of a project shares."""

    axis: SliceAxis = "axial"  # slices prompts are drawn on
    window: str | None = None  # CT window for the model; None: by modality
    labels: dict[str, str] = field(default_factory=dict)  # label value (text) -> name
    lease_minutes: float = 30.0  # a case is an annotator's this long after their last action

    def check_label(self, value: int, where: str) -> None:
        """A mask's label (an object id) must be a label value the project declared, when it
        declared any."""
        if not 1 <= value <= MAX_OBJECT_ID:
            raise InputError(f"{where}: label {value} is not a label value (1 to {MAX_OBJECT_ID})")
        if self.labels and str(value) not in self.labels:
            names = ", ".join(f"{label}={name}" for label, name in self.labels.items())
            raise InputError(f"{where}: label {value} is not one of the project's labels ({names})")


@dataclass(frozen=True)
class ModelIdentity:
    """A model as a round records it: the `--model` value and the checkpoint's SHA-256."""

    model: str
    version: str  # NAME@SHA256-PREFIX, short enough for tables
    sha256: str


@dataclass(frozen=True)
class RoundInfo:
    number: int
    model_version: str
    started_at: datetime
    cases: int


@dataclass(frozen=True)
class Lease:
    case: str
    annotator: str
    expires: datetime


@dataclass(frozen=True)
class ProjectStatus:
    name: str
    database: str
    counts: dict[str, int]  # state -> cases
    leases: list[Lease]  # leases still running
    rounds: list[RoundInfo]
    without_round: int = 0  # cases imported and not yet pre-segmented or opened: no model has touched them


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise InputError(
            f"{what} {value!r}: use letters, digits and . _ @ + - (starting with a letter or digit, at most 200)"
        )
    return value


# Characters of a model's name kept in its version (the end, where the file's name is): the column holds 300.
MODEL_NAME_KEPT = 280


def model_identity(spec: str, check_builds: bool = True) -> ModelIdentity:
    """The identity of `--model SPEC`: the embedded LiteMedSAM, a preset or a checkpoint file. A
    file is built into its model once here (unless the caller builds it next: `check_builds`), so
    that a round never starts on one that cannot run."""
    if spec == DEFAULT_MODEL:
        from medsam2.models.weights import LITE_MEDSAM_SHA256

        return ModelIdentity(spec, f"{spec}@{LITE_MEDSAM_SHA256[:12]}", LITE_MEDSAM_SHA256)
    from medsam2.engine.registry import resolve_model

    from medsam2.engine.models import load_predictor

    choice = resolve_model(spec)
    if check_builds:
        load_predictor(spec)
    digest = file_sha256(choice.path)
    # A preset is stored by name (each machine configures its own path); a file by absolute path,
    # with the preset whose settings it was given (without them a SAM 2.1 file runs as Meta's).
    if choice.preset is not None and spec == choice.preset.name:
        stored = spec
    else:
        stored = f"{choice.preset.name}={choice.path.resolve()}" if choice.preset is not None else str(choice.path.resolve())
    # A file with its folder: every `medsam2 train` run writes a model.pt, which alone tells rounds apart only by checksum.
    name = choice.preset.name if choice.preset is not None else f"{choice.path.resolve().parent.name}/{choice.path.name}"
    return ModelIdentity(stored, f"{name[-MODEL_NAME_KEPT:]}@{digest[:12]}", digest)


class Project:
    """An open annotation project. Every method runs in its own transaction."""

    def __init__(self, folder: Path, url: URL, engine: Engine, project_id: int, clock: Clock = utc_now):
        self.folder = folder
        self.url = url
        self.engine = engine
        self.id = project_id
        self.clock = clock
        self._sessions = db.sessions(engine)
        with self.transaction() as session:
            row = session.get(ProjectRow, project_id)
            self.name = row.name
            self.settings = ProjectSettings(
                axis=row.axis, window=row.window, labels=dict(row.labels), lease_minutes=row.lease_seconds / 60
            )

    @property
    def lease_duration(self) -> timedelta:
        return timedelta(minutes=self.settings.lease_minutes)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed together at the end, or not at all."""
        try:
            with self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError) as error:  # the server went away, the file is locked...
            raise UnavailableError(f"{db.shown(self.url)}: {db.reason(error, self.engine.url)}") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- rounds ----------------------------------------------------------------------------------

    def current_round(self, session: Session) -> RoundRow:
        return session.scalars(
            select(RoundRow).where(RoundRow.project_id == self.id).order_by(RoundRow.number.desc()).limit(1)
        ).one()

    def start_round(self, model: str) -> RoundRow:
        """Begin the next round with `model` (after fine-tuning on the accepted masks, say): cases
        pre-segmented from now on record this round and model."""
        identity = model_identity(model)
        with self.transaction() as session:
            number = self.current_round(session).number + 1
            row = RoundRow(
                project_id=self.id,
                number=number,
                model=identity.model,
                model_version=identity.version,
                model_sha256=identity.sha256,
                started_at=self.clock(),
            )
            session.add(row)
        return row

    # -- cases -----------------------------------------------------------------------------------

    def case(self, session: Session, name: str) -> CaseRow:
        row = session.scalars(select(CaseRow).where(CaseRow.project_id == self.id, CaseRow.name == name)).one_or_none()
        if row is None:
            raise UnknownCase(f"project {self.name}: no case named {name!r} (see `medsam2 annotate status --cases`)")
        return row

    def cases(self, state: CaseState | None = None) -> list[CaseRow]:
        with self.transaction() as session:
            query = select(CaseRow).where(CaseRow.project_id == self.id)
            if state is not None:
                query = query.where(CaseRow.state == state.value)
            return list(session.scalars(query.order_by(CaseRow.id)))

    def status(self) -> ProjectStatus:
        now = self.clock()
        with self.transaction() as session:
            counts = dict(
                session.execute(
                    select(CaseRow.state, func.count()).where(CaseRow.project_id == self.id).group_by(CaseRow.state)
                ).all()
            )
            leased = session.execute(
                select(CaseRow.name, CaseRow.lease_owner, CaseRow.lease_expires)
                .where(CaseRow.project_id == self.id, CaseRow.lease_owner.is_not(None), CaseRow.lease_expires > now)
                .order_by(CaseRow.lease_expires)
            ).all()
            per_round = dict(
                session.execute(
                    select(CaseRow.round_id, func.count()).where(CaseRow.project_id == self.id).group_by(CaseRow.round_id)
                ).all()
            )
            rounds = session.scalars(select(RoundRow).where(RoundRow.project_id == self.id).order_by(RoundRow.number))
            return ProjectStatus(
                name=self.name,
                database=db.shown(self.url),
                counts={state.value: counts.get(state.value, 0) for state in CaseState},
                leases=[Lease(*row) for row in leased],
                rounds=[RoundInfo(r.number, r.model_version, r.started_at, per_round.get(r.id, 0)) for r in rounds],
                without_round=per_round.get(None, 0),
            )


MIN_LEASE_MINUTES, MAX_LEASE_MINUTES = 1 / 60, 365 * 24 * 60


def init_project(
    folder: Path,
    database: str = DEFAULT_DB,
    name: str | None = None,
    settings: ProjectSettings | None = None,
    model: str = DEFAULT_MODEL,
) -> Project:
    """Create a project in `folder` (created if missing, must not hold a project yet) on the
    database `database` (an SQLite path relative to the folder, or a URL), with round 1 on `model`."""
    settings = settings or ProjectSettings()
    folder = Path(folder).resolve()
    if name is None and not NAME_PATTERN.match(folder.name):
        raise InputError(
            f"{folder}: the folder's name cannot name the project (letters, digits and . _ @ + - only): give a name with --name"
        )
    name = check_name(name or folder.name, "project name")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: a file is there; a project is a folder (give a new folder's name)")
    if (folder / PROJECT_FILE).exists():
        raise InputError(f"{folder}: already an annotation project ({PROJECT_FILE} exists)")
    if settings.axis not in AXES:
        raise InputError(f"--axis {settings.axis!r}: choose axial, coronal or sagittal")
    # Stored as whole seconds: under half a second would be a lease that has run out when taken
    # (two annotators could take the same case); past a year, inf or nan, no lease end to compute.
    if not MIN_LEASE_MINUTES <= settings.lease_minutes <= MAX_LEASE_MINUTES:
        raise InputError(
            f"--lease-minutes {settings.lease_minutes}: must be from {MIN_LEASE_MINUTES:.3g} (one second) "
            f"to {MAX_LEASE_MINUTES} (a year)"
        )
    if settings.window is not None:
        from medsam2.preprocess import parse_window

        parse_window(settings.window)
    identity = model_identity(model)
    url = db.database_url(database, folder)
    if url.password is not None:
        # The URL is stored as given in the project file, which everyone with the shared folder reads.
        raise InputError(
            f"--db {db.shown(url)}: leave the password out of the URL (it would be stored in {PROJECT_FILE}); "
            "give it through PGPASSWORD or ~/.pgpass"
        )
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        project_id, engine = _create_project_row(url, name, settings, identity)
    except BaseException:
        if created:  # what it holds is ours: a failed init leaves no folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    # Kept as given: an SQLite path relative to the folder lets the folder move as a whole.
    atomic_write_text(folder / PROJECT_FILE, json.dumps({"name": name, "database": database}, indent=1) + "\n")
    return Project(folder, url, engine, project_id)


def _create_project_row(url: URL, name: str, settings: ProjectSettings, identity: ModelIdentity) -> tuple[int, Engine]:
    """The project's row and its round 1 in the database at `url` (created or migrated first)."""
    engine = _open_database(url)
    now = utc_now()
    try:
        with db.sessions(engine).begin() as session:
            project = ProjectRow(
                name=name,
                axis=settings.axis,
                window=settings.window,
                labels=dict(settings.labels),
                lease_seconds=round(settings.lease_minutes * 60),
                created_at=now,
            )
            session.add(project)
            session.flush()
            session.add(
                RoundRow(
                    project_id=project.id,
                    number=1,
                    model=identity.model,
                    model_version=identity.version,
                    model_sha256=identity.sha256,
                    started_at=now,
                )
            )
            project_id = project.id
    except IntegrityError:
        engine.dispose()
        raise InputError(f"{db.shown(url)}: the database already holds a project named {name!r} (use --name)") from None
    return project_id, engine


def open_project(folder: Path, clock: Clock = utc_now) -> Project:
    """Open the project in `folder`, migrating its database to this version's schema if needed."""
    folder = Path(folder).resolve()
    pointer = folder / PROJECT_FILE
    try:
        document = json.loads(pointer.read_text())
        name, database = document["name"], document["database"]
    except FileNotFoundError:
        raise InputError(f"{folder}: not an annotation project (no {PROJECT_FILE}; create one with `medsam2 annotate init`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise InputError(f"{pointer}: damaged project file (expected JSON with name and database)") from None
    url = db.database_url(database, folder)
    if url.get_backend_name() == "sqlite" and url.database:
        # connecting would create an empty database in its place, and then report no project in it
        file = Path(url.database)
        if not file.is_file() or file.stat().st_size == 0:
            raise InputError(f"{file}: the project's database is {'empty' if file.is_file() else 'missing'} (restore it from a backup)")
    engine = _open_database(url)
    with db.sessions(engine).begin() as session:
        project_id = session.scalars(select(ProjectRow.id).where(ProjectRow.name == name)).one_or_none()
    if project_id is None:
        engine.dispose()
        raise InputError(f"{db.shown(url)}: no project named {name!r} in this database")
    return Project(folder, url, engine, project_id, clock)


def _open_database(url: URL) -> Engine:
    engine = db.connect(url)
    try:
        db.migrate(engine)
    except InputError:
        engine.dispose()
        raise
    return engine
