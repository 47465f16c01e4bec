"""Named leases in the database: how several processes agree on one active reconciler.

Each lease has an epoch, raised whenever another holder takes it (never when its holder renews
it, and never lowered: a released lease only expires). A holder that writes under `fenced()`
(db/engine.py) has each of its transactions checked against the epoch it took the lease at, in
the same transaction: a holder that lost the lease while a step ran (paused, cut off) cannot
commit anything after its successor took over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from controlplane.db.models import Lease

EXPIRED = datetime(2000, 1, 1, tzinfo=UTC)  # what a released lease expires at


def acquire(*, session: Session, name: str, holder: str, now: datetime, ttl: timedelta) -> int | None:
    """Take or renew lease NAME for HOLDER: the epoch at which HOLDER holds it afterwards (its
    fencing token, at least 1), or None when another holder has it."""
    expires = now + ttl
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name)  # type: ignore[arg-type]
        .where((Lease.holder == holder) | (Lease.expires_at < now))  # type: ignore[arg-type]
        .values(holder=holder, expires_at=expires,
                epoch=case((Lease.holder == holder, Lease.epoch), else_=Lease.epoch + 1))  # type: ignore[arg-type]
    )
    if taken.rowcount:  # type: ignore[attr-defined]
        return _epoch(session, name, holder)
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        return None  # someone else holds it
    return _epoch(session, name, holder)


def release(*, session: Session, name: str, holder: str) -> None:
    """Let the lease expire now (its row and epoch stay, so the next holder's epoch is higher)."""
    session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)  # type: ignore[arg-type]
                    .values(expires_at=EXPIRED))


def _epoch(session: Session, name: str, holder: str) -> int | None:
    """The epoch at which HOLDER holds lease NAME, read afresh (not from the session's cache)."""
    return session.execute(select(col(Lease.epoch)).where(col(Lease.name) == name, col(Lease.holder) == holder)
                           ).scalar_one_or_none()


def get(*, session: Session, name: str) -> Lease | None:
    return session.get(Lease, name)


def holder_of(*, session: Session, name: str) -> str | None:
    lease = get(session=session, name=name)
    return lease.holder if lease else None


def take_over(*, session: Session, name: str, stale_holder: str, holder: str, now: datetime,
              ttl: timedelta) -> int | None:
    """Replace STALE_HOLDER (known dead) by HOLDER: HOLDER's epoch, or None if someone else got
    there first."""
    taken = session.execute(
        update(Lease).where(Lease.name == name, Lease.holder == stale_holder)  # type: ignore[arg-type]
        .values(holder=holder, expires_at=now + ttl, epoch=Lease.epoch + 1)
    )
    return _epoch(session, name, holder) if taken.rowcount else None  # type: ignore[attr-defined]
