"""API session repository functions (token ids, never the tokens themselves)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session

from controlplane.db.models import ApiSession


def create(*, session: Session, api_session: ApiSession) -> ApiSession:
    session.add(api_session)
    session.flush()
    return api_session


def get(*, session: Session, jti: str) -> ApiSession | None:
    return session.get(ApiSession, jti)


def revoke(*, session: Session, jti: str, now: datetime) -> None:
    row = session.get(ApiSession, jti)
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
        session.add(row)


def revoke_user(*, session: Session, username: str, now: datetime) -> int:
    result = session.execute(
        update(ApiSession).where(ApiSession.username == username, ApiSession.revoked_at.is_(None))  # type: ignore[arg-type,union-attr]
        .values(revoked_at=now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
