"""Roster repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, select

from controlplane.db.models import RosterRecord


def for_pool(*, session: Session, pool_id: int) -> RosterRecord | None:
    return session.exec(select(RosterRecord).where(RosterRecord.pool_id == pool_id)).first()


def list_all(*, session: Session) -> list[RosterRecord]:
    return list(session.exec(select(RosterRecord)))


def upsert(*, session: Session, record: RosterRecord) -> RosterRecord:
    existing = for_pool(session=session, pool_id=record.pool_id)
    if existing is not None:
        existing.document, existing.sha256, existing.source = record.document, record.sha256, record.source
        existing.applied_at, existing.actor = record.applied_at, record.actor
        record = existing
    session.add(record)
    session.flush()
    return record


def delete(*, session: Session, pool_id: int) -> bool:
    """Remove the roster of POOL_ID; False when it had none."""
    existing = for_pool(session=session, pool_id=pool_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    return existing is not None
