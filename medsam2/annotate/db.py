"""Connecting to the annotation database and bringing its schema up to date.

SQLite (one file, the default) or PostgreSQL (a URL such as
``postgresql://annotator@dbhost/medsam2``, driven by psycopg 3; give the password through
``PGPASSWORD`` or ``~/.pgpass`` rather than in the URL). The schema is Alembic's: opening a
database applies any migration it lacks, under a lock so that two processes opening it at once do
not both migrate.

SQLite transactions all start with ``BEGIN IMMEDIATE``: the write lock is taken at the start, so a
transaction that reads a case and then updates it cannot interleave with another writer (with
Python's default deferred BEGIN, two processes could both read the same free case). Transactions
here are short (no model runs inside), so serialising them costs nothing noticeable. The database
runs in WAL mode; a killed process loses nothing it committed. A transaction that finds the
write lock taken (another command, or the web server, is writing) waits for it up to
SQLITE_BUSY_SECONDS, and says so on stderr once the wait outlasts WAIT_NOTICE_SECONDS, so that a
command waiting for the lock is not taken for a hung one.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from medsam2.errors import InputError
from medsam2.io.atomic import disk_full

SQLITE_BUSY_SECONDS = 60
# Waits for the SQLite write lock shorter than this pass unsaid (another command's transactions are short).
WAIT_NOTICE_SECONDS = 1.5
# pg_advisory_xact_lock key held while migrating ("medsam2" in ASCII).
MIGRATION_LOCK_KEY = 0x6D656473616D32


def database_url(spec: str, folder: Path) -> URL:
    """The SQLAlchemy URL of ``--db SPEC``: a ``sqlite:///`` or ``postgresql://`` URL, or the path
    of an SQLite file (relative to the project folder)."""
    if "://" not in spec:
        return URL.create("sqlite", database=str((folder / spec).resolve()))
    try:
        url = make_url(spec)
    except ArgumentError:
        raise InputError(f"--db {spec!r}: not a database URL (sqlite:///FILE or postgresql://USER@HOST/DB)") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database:
            raise InputError(f"--db {spec!r}: an SQLite database needs a file (sqlite:///project.db)")
        return url.set(database=str((folder / url.database).resolve()))
    raise InputError(f"--db {spec!r}: unsupported database {backend!r} (use SQLite or PostgreSQL)")


def shown(url: URL) -> str:
    """The URL for messages, password hidden, as users write it (without the driver chosen for them)."""
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def connect(url: URL) -> Engine:
    """An engine for `url`, configured for safe concurrent use (see the module doc)."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the sqlite3 module, emits BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_immediate(connection) -> None:
        with said_if_waiting(url):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def said_if_waiting(url: URL) -> Iterator[None]:
    """Say once on stderr, should the block take over WAIT_NOTICE_SECONDS, that it waits for the
    SQLite database `url`'s write lock (BEGIN IMMEDIATE blocks in the driver, so a timer says it)."""
    notice = threading.Timer(
        WAIT_NOTICE_SECONDS,
        lambda: print(
            f"waiting for the project database {shown(url)}, which another medsam2 command (or the web server) "
            f"is writing (for at most {SQLITE_BUSY_SECONDS} s)",
            file=sys.stderr,
            flush=True,
        ),
    )
    notice.daemon = True
    notice.start()
    try:
        yield
    finally:
        notice.cancel()


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("medsam2.annotate") / "migrations"))
    return config


def migrate(engine: Engine) -> None:
    """Apply the migrations the database lacks (all of them to a new one)."""
    config = alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            current = MigrationContext.configure(connection).get_current_revision()
            if current == head:
                return
            known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
            if current is not None and current not in known:
                raise InputError(
                    f"{shown(engine.url)}: the database is at schema revision {current}, newer than this "
                    "medsam2 knows; upgrade medsam2"
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except DBAPIError as error:
        raise InputError(f"{shown(engine.url)}: {reason(error, engine.url)}") from None
    if current is not None:
        # A shared database upgraded by one annotator's newer medsam2 shuts out the others' older
        # ones; whoever upgraded it should know, so they can tell the team.
        print(
            f"note: {shown(engine.url)}: upgraded the database's schema from revision {current} to {head} "
            "(an older medsam2 can no longer open it)",
            file=sys.stderr,
        )


# What to do about the PostgreSQL refusals a new user meets first, added to the server's words.
PG_ADVICE = {
    r"password authentication failed|no password supplied": "give the password through PGPASSWORD or ~/.pgpass",
    r'database ".*" does not exist': "create it first (createdb NAME), or name another",
    r'role ".*" does not exist': "connect as an existing user, or create it (createuser NAME)",
}


def reason(error: DBAPIError, url: object = None) -> str:
    """The driver's first message line, for a one-line error, with what to do where that is known.
    SQLite says 'disk I/O error' where its shared-memory file (-shm) cannot grow on a full disk:
    with the SQLite database's `url`, that is said as the full disk it is."""
    lines = str(error.orig or error).strip().splitlines()
    said = lines[0] if lines else type(error).__name__
    database = getattr(url, "database", None) if getattr(url, "drivername", "").startswith("sqlite") else None
    if said == "disk I/O error" and database and disk_full(Path(database).parent):
        said = "database or disk is full (No space left on device)"
    advice = next((text for cause, text in PG_ADVICE.items() if re.search(cause, said)), None)
    return f"{said}; {advice}" if advice else said
