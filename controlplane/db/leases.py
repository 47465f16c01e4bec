"""Named leases in the database: how several processes agree on one active reconciler."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from controlplane.db.models import Lease


def acquire(*, session: Session, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew lease NAME for HOLDER. True when HOLDER holds it afterwards."""
    expires = now + ttl
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name)  # type: ignore[arg-type]
        .where((Lease.holder == holder) | (Lease.expires_at < now))  # type: ignore[arg-type]
        .values(holder=holder, expires_at=expires)
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        return True
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        return False  # someone else holds it
    return True


def release(*, session: Session, name: str, holder: str) -> None:
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))  # type: ignore[arg-type]


def get(*, session: Session, name: str) -> Lease | None:
    return session.get(Lease, name)


def holder_of(*, session: Session, name: str) -> str | None:
    lease = session.get(Lease, name)
    return lease.holder if lease else None


def take_over(*, session: Session, name: str, stale_holder: str, holder: str, now: datetime,
              ttl: timedelta) -> bool:
    """Replace STALE_HOLDER (known dead) by HOLDER; False if someone else got there first."""
    taken = session.execute(
        update(Lease).where(Lease.name == name, Lease.holder == stale_holder)  # type: ignore[arg-type]
        .values(holder=holder, expires_at=now + ttl)
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]
