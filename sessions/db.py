"""Database engines, schema migration and transaction scopes.

Two back ends are supported, with identical behaviour as far as callers can tell:

* SQLite (``sqlite:///path/to/file.db``; ``sqlite://`` in-memory for unit tests only): WAL
  journal, ``foreign_keys=ON``, a 30 s ``busy_timeout`` on every connection.  SQLAlchemy, not
  the ``sqlite3`` driver, emits ``BEGIN``, so transactions really start when SQLAlchemy says so
  and a writer can take the write lock up front (``BEGIN IMMEDIATE``, see
  :func:`write_connection` and ``session_scope(write=True)``).  Writers wait, they do not fail:
  within a process they queue on one writer lock per database file, across processes SQLite's
  busy timeout makes ``BEGIN IMMEDIATE`` wait for the lock.  A transaction that reads *before*
  it writes must be a write scope: SQLite cannot upgrade a read transaction while another
  connection writes (it answers "database is locked" at once, without waiting).
* PostgreSQL through psycopg 3 (``postgresql+psycopg://``; ``postgresql://`` and
  ``postgres://`` are rewritten to it).

Driver errors leaving this module's scopes are translated into the sessions error tree
(:func:`translate_db_error`); the original exception is kept as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoResultFound,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from sessions.errors import (
    ConflictError,
    NotFoundError,
    SessionsError,
    StorageError,
    ValidationError,
)

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Connection execution option read by the SQLite "begin" hook: how to BEGIN.
SQLITE_BEGIN_MODE = "conduit_sqlite_begin"
_SQLITE_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")

# pg_advisory_xact_lock key serialising schema migrations across processes.
_MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"conduit.migrate").digest()[:8], "big", signed=True
)


# --------------------------------------------------------------------------- engines


def create_db_engine(url: str) -> Engine:
    """Return an engine for ``url`` configured for Conduit.

    Accepted: ``sqlite:///<file>`` (or ``sqlite+pysqlite``), ``sqlite://`` (in-memory, one
    shared connection: single-threaded unit tests only), ``postgresql+psycopg://…``,
    ``postgresql://…`` and ``postgres://…``.  Anything else (other drivers, ``:memory:`` file
    names, SQLite URI mode) raises :class:`ValidationError`.  No connection is opened here;
    connection failures surface on first use.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return sa.create_engine(parsed, pool_pre_ping=True)


def is_sqlite(engine: Engine) -> bool:
    """True when ``engine`` talks to SQLite (the only other back end is PostgreSQL)."""
    return engine.dialect.name == "sqlite"


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValidationError("create_db_engine: malformed database URL") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise ValidationError(
            f"create_db_engine: unsupported database URL {shown!r} "
            "(use sqlite:///<file> or postgresql+psycopg://)"
        )
    database = parsed.database or ""
    if database == ":memory:" or database.startswith("file:") or parsed.query:
        raise ValidationError(
            f"create_db_engine: unsupported SQLite URL {shown!r} "
            "(use sqlite:///<file>, or sqlite:// for an in-memory test database)"
        )
    return parsed


def _sqlite_engine(url: URL) -> Engine:
    in_memory = not url.database
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Why: stop sqlite3 from issuing its own (late, DML-only) BEGIN; _on_begin does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_MODE, "DEFERRED")
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValidationError(f"begin: unknown SQLite transaction mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# --------------------------------------------------------------------------- writer lock

# One lock per SQLite database file (in-memory: per engine), shared by every engine in the
# process.  Why, on top of BEGIN IMMEDIATE: SQLite's busy handler polls with sleeps, so under
# contention a waiter can be overtaken again and again; threads queued on a lock are served in
# turn and wake the moment the writer is done.
_WRITER_LOCKS: dict[str, threading.Lock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


class _Held(threading.local):
    def __init__(self) -> None:
        self.keys: set[str] = set()  # the writer locks this thread holds


_HELD = _Held()


def _writer_key(engine: Engine) -> str:
    database = engine.url.database
    return f"file:{os.path.realpath(database)}" if database else f"memory:{id(engine)}"


@contextmanager
def _sqlite_writer(engine: Engine, operation: str) -> Iterator[None]:
    """Hold this process's writer lock for ``engine``'s database (waiting up to the busy timeout).

    A thread that already holds it (a write scope opened inside another write scope, or a
    coroutine holding a scope across an ``await`` on the loop thread) would wait for itself:
    that is refused at once with :class:`StorageError` instead.
    """
    key = _writer_key(engine)
    held = _HELD.keys
    if key in held:
        raise StorageError(f"{operation}: a write transaction is already open in this thread")
    with _WRITER_LOCKS_GUARD:
        lock = _WRITER_LOCKS.setdefault(key, threading.Lock())
    if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise StorageError(
            f"{operation}: database is locked (no write lock within "
            f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s)"
        )
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        lock.release()


def writer_lock(engine: Engine, operation: str = "database write") -> AbstractContextManager[None]:
    """Context manager: the process-wide writer lock of ``engine`` (SQLite; no-op otherwise)."""
    return _sqlite_writer(engine, operation) if is_sqlite(engine) else nullcontext()


# --------------------------------------------------------------------------- transactions


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """Yield a :class:`sqlmodel.Session`; commit when the block succeeds, roll back otherwise.

    Objects stay usable after the block (``expire_on_commit=False``).  Pass ``write=True``
    whenever the block writes after reading (read-modify-write): on SQLite the block first
    takes this process's writer lock, then the database's write lock at BEGIN (both waited for,
    up to 30 s), so it cannot fail half-way with "database is locked" when it starts writing
    (on PostgreSQL it changes nothing; use ``SELECT … FOR UPDATE``).  Write scopes do not nest
    within one thread (:class:`StorageError`).  Without ``write`` the scope is for reading, or
    for blocks whose *first* statement writes; it never blocks writers.  Database errors
    raised in the block or by the commit are re-raised as :class:`SessionsError` subclasses
    (see :func:`translate_db_error`); any other exception propagates unchanged after the
    rollback.
    """
    with writer_lock(engine, "database transaction") if write else nullcontext():
        session = Session(engine, expire_on_commit=False)
        try:
            if write and is_sqlite(engine):
                session.connection(execution_options={SQLITE_BEGIN_MODE: "IMMEDIATE"})
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            _reraise(exc, "database transaction")
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


@contextmanager
def write_connection(engine: Engine, *, schema_change: bool = False) -> Iterator[Connection]:
    """Yield a Core connection inside a transaction that already holds the write lock on SQLite.

    On SQLite it waits for the writer lock as ``session_scope(write=True)`` does.  On
    PostgreSQL this is an ordinary READ COMMITTED transaction: take advisory or row locks as
    needed.  Commits on success, rolls back on error; errors translate as in
    :func:`session_scope`.

    ``schema_change`` (SQLite): foreign-key enforcement is off for the transaction, because
    changing a table means recreating it and dropping the old one would run the ON DELETE
    actions of every row referring to it (or be refused by RESTRICT); ``PRAGMA
    foreign_key_check`` must find nothing before it commits (else the change rolls back).
    """
    try:
        with writer_lock(engine, "database write"), engine.connect() as conn:
            sqlite_schema = schema_change and is_sqlite(engine)
            if is_sqlite(engine):
                conn.execution_options(**{SQLITE_BEGIN_MODE: "IMMEDIATE"})
            if sqlite_schema:  # outside any transaction, where the pragma takes effect
                _raw_pragma(conn, "PRAGMA foreign_keys = OFF")
            try:
                with conn.begin():
                    yield conn
                    if sqlite_schema:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise StorageError(
                                f"schema change: {len(broken)} row(s) would break foreign keys "
                                f"(first: table {broken[0][0]}); nothing was changed"
                            )
            finally:
                if sqlite_schema:
                    _raw_pragma(conn, "PRAGMA foreign_keys = ON")
    except SQLAlchemyError as exc:
        _reraise(exc, "database write")


def _raw_pragma(conn: Connection, sql: str) -> None:
    # The DBAPI connection runs in autocommit (isolation_level None): no implicit BEGIN.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _reraise(exc: SQLAlchemyError, operation: str) -> NoReturn:
    translated = translate_db_error(exc, operation)
    if translated is None:
        raise exc
    raise translated from exc


def translate_db_error(exc: SQLAlchemyError, operation: str) -> SessionsError | None:
    """Map a SQLAlchemy error onto the sessions error tree.

    * unique or foreign-key violation → :class:`ConflictError`
    * CHECK / NOT NULL violation, bad data (naive datetime, value out of range) →
      :class:`ValidationError`
    * ``NoResultFound`` (from ``.one()``) → :class:`NotFoundError`
    * any other driver error (locked, disconnected, …) → :class:`StorageError`

    Returns None for other SQLAlchemy errors: they are programming errors, re-raise them as
    they are.  Messages name the operation and the violated constraint, never the offending
    values (they may be secret).
    """
    if isinstance(exc, IntegrityError):
        return _integrity_error(exc, operation)
    if isinstance(exc, DataError):
        return ValidationError(f"{operation}: value rejected by the database")
    if isinstance(exc, DBAPIError):
        return StorageError(f"{operation}: database error ({type(exc.orig).__name__})")
    if isinstance(exc, StatementError) and isinstance(exc.orig, ValueError | TypeError):
        return ValidationError(f"{operation}: {exc.orig}")
    if isinstance(exc, NoResultFound):
        return NotFoundError(f"{operation}: no matching row")
    return None


def _integrity_error(exc: IntegrityError, operation: str) -> SessionsError:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    message = str(orig)
    if sqlstate is not None:  # PostgreSQL: SQLSTATE class 23 + the constraint's name
        diag = getattr(orig, "diag", None)
        what = getattr(diag, "constraint_name", None) or getattr(diag, "column_name", None)
        kind = {
            "23505": "unique",
            "23503": "foreign key",
            "23514": "check",
            "23502": "not null",
        }.get(sqlstate, "integrity")
    else:  # SQLite: "UNIQUE constraint failed: assets.name" names columns, not values
        head, _, what = message.partition(": ")
        kind = head.removesuffix(" constraint failed").lower()
    detail = f"{kind} constraint {what}" if what else f"{kind} constraint"
    if kind in ("check", "not null"):
        return ValidationError(f"{operation}: {detail} violated")
    return ConflictError(f"{operation}: {detail} violated")


# --------------------------------------------------------------------------- migrations


# Why alembic is imported inside the functions below: it doubles the import time of the
# package, and most importers (CLI commands, subprocesses, the audit log) never migrate.


def alembic_config() -> Config:
    """An Alembic config for ``sessions/migrations`` (no alembic.ini involved)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StorageError("head_revision: no migrations found")
    return head


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (a no-op when already there).

    Safe to call from several processes at once: the upgrade runs in one transaction holding
    the write lock (SQLite) or an advisory lock (PostgreSQL), and DDL is transactional on both,
    so a failed upgrade leaves the previous schema intact.  Raises :class:`StorageError` when
    the database cannot be reached or the upgrade fails.
    """
    from alembic import command

    cfg = alembic_config()
    try:
        with write_connection(engine, schema_change=True) as conn:
            if not is_sqlite(engine):
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SessionsError as exc:
        raise StorageError(f"migrate: {exc.message}") from exc


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty (unmigrated) database."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        _reraise(exc, "current_revision")
