"""Connect tickets (stored as hashes) and the atomic desktop claim."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, select, update
from sqlmodel import Session, col

from controlplane.db.models import ConnectTicket, Desktop
from controlplane.domain.desktop import DesktopState


def create(*, session: Session, ticket: ConnectTicket) -> ConnectTicket:
    session.add(ticket)
    session.flush()
    return ticket


def redeem(*, session: Session, digest: str, now: datetime) -> ConnectTicket | None:
    """Mark the ticket used if it is unused and unexpired; None otherwise. One winner, ever."""
    used = session.execute(
        update(ConnectTicket)
        .where(ConnectTicket.digest == digest, ConnectTicket.used_at.is_(None),  # type: ignore[union-attr,arg-type]
               ConnectTicket.expires_at > now)  # type: ignore[arg-type]
        .values(used_at=now)
        .returning(ConnectTicket),  # the row itself: no second look-up
        execution_options={"populate_existing": True})
    return used.scalars().first()


def claim_ready(*, session: Session, pool_id: int, username: str, now: datetime) -> Desktop | None:
    """Give USERNAME one ready desktop of the pool, atomically (one UPDATE: two agents clicking at
    the same instant can never get the same desktop). On PostgreSQL the candidate is locked with
    SKIP LOCKED, so agents clicking at once (on any replica) each get the next free desktop
    instead of queueing behind the first and finding it taken; SQLite has one writer at a time."""
    candidate = (
        select(col(Desktop.id))
        .where(col(Desktop.pool_id) == pool_id, col(Desktop.state) == DesktopState.READY,
               col(Desktop.assigned_to).is_(None))
        .order_by(col(Desktop.id)).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    )
    session.flush()  # this transaction's changes first; then what it read is read again after the claim
    session.expire_all()
    claimed = session.execute(
        update(Desktop)
        .where(and_(Desktop.id == candidate, Desktop.state == DesktopState.READY))  # type: ignore[arg-type]
        .values(state=DesktopState.IN_USE, assigned_to=username, state_since=now)
        .returning(Desktop),  # the claimed row as it is now: no second look-up
        execution_options={"populate_existing": True})
    return claimed.scalars().first()


def assigned(*, session: Session, pool_id: int, username: str) -> Desktop | None:
    query = select(Desktop).where(Desktop.pool_id == pool_id, Desktop.assigned_to == username,  # type: ignore[arg-type]
                                  Desktop.state == DesktopState.IN_USE)  # type: ignore[arg-type]
    return session.execute(query).scalars().first()


def delete_for_desktop(*, session: Session, desktop_id: int) -> None:
    """A deleted desktop leaves no tickets behind (used or not)."""
    session.execute(delete(ConnectTicket).where(ConnectTicket.desktop_id == desktop_id))  # type: ignore[arg-type]
