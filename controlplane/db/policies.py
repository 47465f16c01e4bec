"""Policy revision repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, select

from controlplane.db.models import PolicyRevision
from controlplane.errors import NotFound


def current(*, session: Session) -> PolicyRevision | None:
    return session.exec(select(PolicyRevision).order_by(PolicyRevision.id.desc())).first()  # type: ignore[union-attr]


def head(*, session: Session) -> tuple[int, str] | None:
    """The current revision's id and sha256 (of its documents), without reading them."""
    row = session.exec(select(PolicyRevision.id, PolicyRevision.sha256)  # type: ignore[call-overload]
                       .order_by(PolicyRevision.id.desc()).limit(1)).first()  # type: ignore[union-attr]
    return (row[0] or 0, row[1]) if row is not None else None


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
