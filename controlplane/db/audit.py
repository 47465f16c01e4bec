"""The append-only audit log. There is `append` and there are reads; nothing else."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, func, select

from controlplane.db.models import AuditEvent


def append(*, session: Session, actor: str, action: str, target: str, **detail: Any) -> AuditEvent:
    event = AuditEvent(actor=actor, action=action, target=target, detail=detail)
    session.add(event)
    session.flush()
    return event


def list_recent(*, session: Session, limit: int = 100, action: str | None = None,
                target: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)  # type: ignore[union-attr]
    if action:
        query = query.where(AuditEvent.action == action)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    return list(session.exec(query))


def total(*, session: Session) -> int:
    """How many events were ever written (ids only grow; nothing is ever deleted)."""
    return session.execute(select(func.max(AuditEvent.id))).scalar_one() or 0
