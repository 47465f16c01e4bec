"""Live display sessions, one row per open gateway WebSocket. Keyword-only; the caller commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlmodel import Session, col

from controlplane.db.models import DisplaySession


def create(*, session: Session, row: DisplaySession) -> DisplaySession:
    session.add(row)
    session.flush()
    return row


def touch(*, session: Session, display_id: int, now: datetime, usage: dict[str, Any] | None = None) -> bool:
    """Refresh the row's heartbeat (and what the gateway saw: USAGE's columns); False if it is gone
    (swept as stale)."""
    done = session.execute(update(DisplaySession).where(col(DisplaySession.id) == display_id)
                           .values(seen_at=now, **(usage or {})))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def remove(*, session: Session, display_id: int) -> None:
    session.execute(delete(DisplaySession).where(col(DisplaySession.id) == display_id))


def count_fresh(*, session: Session, desktop_id: int, since: datetime) -> int:
    """Sessions on DESKTOP_ID whose gateway has refreshed them since SINCE."""
    query = select(func.count()).select_from(DisplaySession).where(
        col(DisplaySession.desktop_id) == desktop_id, col(DisplaySession.seen_at) >= since)
    return int(session.execute(query).scalar_one())


def lock_user(*, session: Session, user: str) -> None:
    """Hold USER's lock until the transaction ends, so counting their sessions and adding one is
    a single step for every replica. PostgreSQL: a transaction-scoped advisory lock on the name.
    SQLite has one writer at a time: call this after the transaction's first write (it holds the
    database's write lock from then on) and it needs nothing more."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                        {"key": f"display-sessions:{user}"})


def count_user(*, session: Session, user: str) -> int:
    """USER's display sessions (call after `remove_stale`: every row left is live)."""
    query = select(func.count()).select_from(DisplaySession).where(col(DisplaySession.username) == user)
    return int(session.execute(query).scalar_one())


def remove_stale(*, session: Session, before: datetime) -> int:
    """Rows no gateway refreshed since BEFORE (their gateway died): they count for nothing."""
    done = session.execute(delete(DisplaySession).where(col(DisplaySession.seen_at) < before))
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def list_all(*, session: Session) -> list[DisplaySession]:
    return list(session.execute(select(DisplaySession).order_by(col(DisplaySession.id))).scalars())


def list_fresh(*, session: Session, since: datetime) -> list[DisplaySession]:
    """Live display sessions on any desktop (heartbeat at or after SINCE), oldest first."""
    query = select(DisplaySession).where(col(DisplaySession.seen_at) >= since).order_by(col(DisplaySession.id))
    return list(session.execute(query).scalars())


def count_all_fresh(*, session: Session, since: datetime) -> int:
    """Live display sessions on any desktop (heartbeat at or after SINCE)."""
    return session.execute(select(func.count()).where(col(DisplaySession.seen_at) >= since)).scalar_one()
