"""The audit log is append-only in the database itself: no statement rewrites or removes a row,
and a database whose guard is missing is refused at start instead of silently accepting edits."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from controlplane.db import audit
from controlplane.db.engine import AppendOnlyMissing, make_engine, migrate, session_scope

REWRITES = [
    "UPDATE audit_events SET actor = 'mallory'",
    "DELETE FROM audit_events",
    # REPLACE deletes the conflicting row first: SQLite fires DELETE triggers for that only with
    # recursive_triggers on, so without it these would overwrite an event silently
    "INSERT OR REPLACE INTO audit_events (id, at, actor, action, target, detail) "
    "VALUES (1, '2026-01-01 00:00:00', 'mallory', 'nothing', 'happened', '{}')",
    "REPLACE INTO audit_events (id, at, actor, action, target, detail) "
    "VALUES (1, '2026-01-01 00:00:00', 'mallory', 'nothing', 'happened', '{}')",
    "INSERT INTO audit_events (id, at, actor, action, target, detail) "
    "VALUES (1, '2026-01-01 00:00:00', 'mallory', 'nothing', 'happened', '{}') "
    "ON CONFLICT (id) DO UPDATE SET actor = 'mallory'",
]


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    migrate(engine)
    with session_scope(engine) as session:
        audit.append(session=session, actor="alice", action="desktop.connect", target="sd-main-a-000001")
    return engine


@pytest.mark.parametrize("statement", REWRITES)
def test_no_statement_rewrites_or_removes_an_event(engine, statement):
    with pytest.raises(DatabaseError, match="append-only"), session_scope(engine) as session:
        session.execute(text(statement))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, actor, action FROM audit_events")).all()
    assert [tuple(r) for r in rows] == [(1, "alice", "desktop.connect")]


def test_a_database_without_the_guard_is_refused_at_start(engine):
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_delete"))
    with pytest.raises(AppendOnlyMissing, match="audit_events_no_delete"):
        migrate(engine)


# --- PostgreSQL: the application's role holds no privilege to rewrite the log, and even the
# schema's owner (who could grant itself one) meets the triggers ----------------------------------

PG_REWRITES = [
    "UPDATE audit_events SET actor = 'mallory'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
    "INSERT INTO audit_events (id, at, actor, action, target, detail) "
    "VALUES (1, '2026-01-01 00:00:00', 'mallory', 'nothing', 'happened', '{}') "
    "ON CONFLICT (id) DO UPDATE SET actor = 'mallory'",
    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_delete",
    "DROP TRIGGER audit_events_no_update ON audit_events",
]


@pytest.fixture
def pg(postgres, pg_database):
    """(owner engine, application engine) on a migrated database with one event."""
    from tests.postgres import APP  # noqa: PLC0415

    owner, app = make_engine(postgres.url(pg_database)), make_engine(postgres.url(pg_database, APP))
    with session_scope(app) as session:
        audit.append(session=session, actor="alice", action="desktop.connect", target="sd-main-a-000001")
    yield owner, app
    owner.dispose()
    app.dispose()


def events(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT actor, action FROM audit_events ORDER BY id"))]


@pytest.mark.parametrize("statement", PG_REWRITES)
def test_the_applications_role_cannot_rewrite_or_unguard_the_log(pg, statement):
    owner, app = pg
    with pytest.raises(DatabaseError, match="permission denied|must be owner"), session_scope(app) as session:
        session.execute(text(statement))
    assert events(owner) == [("alice", "desktop.connect")]


@pytest.mark.parametrize("statement", PG_REWRITES[:4])
def test_even_the_owner_meets_the_triggers(pg, statement):
    owner, _ = pg
    with pytest.raises(DatabaseError, match="append-only"), session_scope(owner) as session:
        session.execute(text("GRANT UPDATE, DELETE, TRUNCATE ON audit_events TO CURRENT_USER"))
        session.execute(text(statement))
    assert events(owner) == [("alice", "desktop.connect")]


def test_a_postgres_database_with_a_disabled_guard_is_refused_at_start(pg):
    owner, _ = pg
    with owner.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_truncate"))
    with pytest.raises(AppendOnlyMissing, match="audit_events_no_truncate"):
        migrate(owner)
