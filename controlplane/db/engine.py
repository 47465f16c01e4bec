"""Engine creation and migrations, for SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, so the API, the reconciler's worker threads and the
CLI can write concurrently without "database is locked". Its files are root's alone (0600).
PostgreSQL sessions run in UTC. Migrations run at start, from day one, and the audit log's
append-only guard is checked after them. On PostgreSQL the schema's owner may migrate while the
application connects as another role, which then holds no UPDATE, DELETE or TRUNCATE on the
audit log (grant_app): even a hijacked application cannot drop the guard.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import Session, create_engine

from controlplane.errors import TemporaryError

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, busy_timeout_ms: int = 5000) -> Engine:
    if url.startswith("sqlite"):
        _private_sqlite_files(make_url(url).database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            # REPLACE deletes conflicting rows; only with this do DELETE triggers (the audit log's
            # append-only guard) fire for them, so INSERT OR REPLACE cannot overwrite an event
            cur.execute("PRAGMA recursive_triggers=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    return create_engine(url, pool_pre_ping=True)


def _private_sqlite_files(database: str | None) -> None:
    """The database file is created 0600 before SQLite opens it, and tightened if it is older.

    SQLite creates its -wal and -shm files with the mode of the database file, so they follow;
    existing ones are tightened too. In-memory databases have no files.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(file.stat().st_mode) != 0o600:
                file.chmod(0o600)
        except FileNotFoundError:
            pass


class AppendOnlyMissing(RuntimeError):
    """The database does not enforce the audit log's append-only rule: refuse to run on it."""


# The audit log is append-only in the database itself, on every database we support: the guard
# is created by the migrations (0001 for SQLite: triggers that RAISE on UPDATE and DELETE; 0011
# for PostgreSQL: the same and TRUNCATE, enabled) and checked here at every start. Supporting
# another database means adding its guard in a migration and a query for it here; until then it
# is refused.
APPEND_ONLY_GUARDS: dict[str, tuple[str, frozenset[str]]] = {
    "sqlite": ("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'",
               frozenset({"audit_events_no_update", "audit_events_no_delete"})),
    "postgresql": ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass "
                   "AND NOT tgisinternal AND tgenabled <> 'D'",
                   frozenset({"audit_events_no_update", "audit_events_no_delete", "audit_events_no_truncate"})),
}


def migrate(engine: Engine, app_role: str | None = None) -> None:
    """Bring the schema to the newest revision (idempotent), then check the audit log's guard.
    With APP_ROLE (PostgreSQL, ENGINE the owner's), grant that role what the application needs."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        check_append_only(conn)
        if app_role and conn.dialect.name == "postgresql":
            grant_app(conn, app_role)


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration for our migrations, run on CONN (in its transaction)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def grant_app(conn: Connection, role: str) -> None:
    """Let ROLE read and write every table but only read and append the audit log (PostgreSQL).
    Run by the schema's owner after each migration, so tables added later are covered too."""
    name = conn.dialect.identifier_preparer.quote(role)
    if conn.exec_driver_sql("SELECT current_user").scalar() == role:
        return  # the application owns the schema: the triggers are its only guard
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {name}")
    conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
    conn.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}")
    conn.exec_driver_sql(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, alembic_version FROM {name}")
    conn.exec_driver_sql(f"REVOKE INSERT ON alembic_version FROM {name}")


def check_append_only(conn: Connection) -> None:
    """Raise AppendOnlyMissing unless this database refuses UPDATE and DELETE on audit_events."""
    dialect = conn.dialect.name
    if dialect not in APPEND_ONLY_GUARDS:
        raise AppendOnlyMissing(f"database {dialect}: no append-only guard for the audit log is known; "
                                "add one (migration + APPEND_ONLY_GUARDS) before running on it")
    query, expected = APPEND_ONLY_GUARDS[dialect]
    missing = expected - {row[0] for row in conn.exec_driver_sql(query)}
    if missing:
        raise AppendOnlyMissing(f"audit log is not append-only: {', '.join(sorted(missing))} missing")


@dataclass(frozen=True)
class Fence:
    lease: str
    epoch: int


_fence: ContextVar[Fence | None] = ContextVar("shiftdesk_fence", default=None)


class LeaseLost(TemporaryError):
    """A fenced writer's lease moved on: its transaction was rolled back, nothing was written."""


@contextmanager
def fenced(lease: str, epoch: int) -> Iterator[None]:
    """Every transaction `session_scope` opens in this context (this thread or task) commits only
    while LEASE is still at EPOCH: the holder's fencing token, checked in the transaction itself
    (a row-locking UPDATE of the lease, so a successor's takeover waits for it or wins first)."""
    token = _fence.set(Fence(lease, epoch))
    try:
        yield
    finally:
        _fence.reset(token)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error (and, under
    `fenced`, only while the lease is still the writer's)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            fence = _fence.get()
            if fence is not None and (session.new or session.dirty or session.deleted or session.info.get(WROTE)):
                _check(session, fence)  # a transaction that only read needs no token
            session.commit()
        except BaseException:
            session.rollback()
            raise


WROTE = "shiftdesk_wrote"  # set on a session once it flushed or executed an INSERT, UPDATE or DELETE


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _context: object) -> None:
    session.info[WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[WROTE] = True


# The fencing check, as plain SQL: it runs before every commit of a step, and building the ORM
# statement each time cost more than running it.
_FENCE_SQL = text("UPDATE leases SET epoch = epoch WHERE name = :lease AND epoch = :epoch")


def _check(session: Session, fence: Fence) -> None:
    held = session.connection().execute(_FENCE_SQL, {"lease": fence.lease, "epoch": fence.epoch})
    if not held.rowcount:
        raise LeaseLost(f"lease {fence.lease} moved past epoch {fence.epoch}: this writer is fenced off", delay=1)


def ping(engine: Engine) -> None:
    """Raise unless the database answers a trivial query now."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
