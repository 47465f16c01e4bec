"""The append-only audit log. There is `append` and there are reads; nothing else."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from controlplane.db.models import AuditEvent


def append(*, session: Session, actor: str, action: str, target: str, **detail: Any) -> AuditEvent:
    return append_all(session=session, events=[event(actor=actor, action=action, target=target, **detail)])[0]


def event(*, actor: str, action: str, target: str, **detail: Any) -> AuditEvent:
    """An event to append (with others: `append_all`)."""
    return AuditEvent(actor=actor, action=action, target=target, detail=detail)


def append_all(*, session: Session, events: list[AuditEvent]) -> list[AuditEvent]:
    """EVENTS appended at once (one flush), in their order."""
    session.add_all(events)
    session.flush()
    return events


def list_recent(*, session: Session, limit: int = 100, action: str | None = None, target: str | None = None,
                actor: str | None = None, since: datetime | None = None, until: datetime | None = None,
                ) -> list[AuditEvent]:
    """Newest first, at most LIMIT, filtered by exact action (or an `action.` prefix such as
    `session.`), target, actor, and a time range [SINCE, UNTIL)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)  # type: ignore[union-attr]
    if action:
        query = query.where(col(AuditEvent.action).startswith(action, autoescape=True) if action.endswith(".")
                            else AuditEvent.action == action)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    if until is not None:
        query = query.where(col(AuditEvent.at) < until)
    return list(session.exec(query))


def total(*, session: Session) -> int:
    """How many events were ever written (ids only grow; nothing is ever deleted)."""
    return session.execute(select(func.max(AuditEvent.id))).scalar_one() or 0
