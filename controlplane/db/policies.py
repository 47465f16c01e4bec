"""Policy revision repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, select

from controlplane.db.models import PolicyRevision
from controlplane.errors import NotFound


def current(*, session: Session) -> PolicyRevision | None:
    return session.exec(select(PolicyRevision).order_by(PolicyRevision.id.desc())).first()  # type: ignore[union-attr]


def get_or_raise(*, session: Session, revision: int) -> PolicyRevision:
    found = session.get(PolicyRevision, revision)
    if found is None:
        raise NotFound(f"revision: {revision} does not exist", field="revision")
    return found


def history(*, session: Session, limit: int = 50) -> list[PolicyRevision]:
    query = select(PolicyRevision).order_by(PolicyRevision.id.desc()).limit(limit)  # type: ignore[union-attr]
    return list(session.exec(query))


def create(*, session: Session, revision: PolicyRevision) -> PolicyRevision:
    session.add(revision)
    session.flush()
    return revision
