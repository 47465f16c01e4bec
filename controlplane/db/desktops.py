"""Desktop repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from controlplane.db.models import Desktop, Host, Pool
from controlplane.domain.desktop import DesktopState, check_transition
from controlplane.domain.network import DesktopNetwork, allocate
from controlplane.errors import NotFound


def get(*, session: Session, desktop_id: int) -> Desktop | None:
    return session.get(Desktop, desktop_id)


def get_many(*, session: Session, ids: list[int]) -> dict[int, Desktop]:
    """The rows of IDS that exist, by id, in one query."""
    return {d.id or 0: d for d in session.exec(select(Desktop).where(col(Desktop.id).in_(ids)))} if ids else {}


def names_taken(*, session: Session, names: list[str]) -> set[str]:
    """Which of NAMES a row has, in one query."""
    return set(session.exec(select(Desktop.name).where(col(Desktop.name).in_(names)))) if names else set()


def get_by_name(*, session: Session, name: str) -> Desktop | None:
    return session.exec(select(Desktop).where(Desktop.name == name)).first()


def get_or_raise(*, session: Session, name: str) -> Desktop:
    desktop = get_by_name(session=session, name=name)
    if desktop is None:
        raise NotFound(f"desktop {name!r} does not exist", field="desktop")
    return desktop


def list_all(*, session: Session, pool_id: int | None = None) -> list[Desktop]:
    query = select(Desktop).order_by(Desktop.pool_id, Desktop.id)  # type: ignore[arg-type]
    if pool_id is not None:
        query = query.where(Desktop.pool_id == pool_id)
    return list(session.exec(query))


def planning_rows(*, session: Session) -> list:
    """Every desktop's columns a reconcile pass works from, as plain rows (id, name, pool_id,
    host_id, image_id, state, state_since, generation, grace_until, retry_at; and who is on it,
    for its app allowlist: assigned_to, assigned_groups, ipv4): a pass over thousands of desktops
    must not build (and JSON-decode) a whole ORM object for each."""
    return list(session.exec(select(  # type: ignore[call-overload, misc]
        Desktop.id, Desktop.name, Desktop.pool_id, Desktop.host_id, Desktop.image_id, Desktop.state,
        Desktop.state_since, Desktop.generation, Desktop.grace_until, Desktop.retry_at,
        Desktop.assigned_to, Desktop.assigned_groups, Desktop.ipv4,
    ).order_by(Desktop.pool_id, Desktop.id)).all())


def list_with_pool(*, session: Session, pool_id: int | None = None) -> list[tuple[Desktop, Pool]]:
    query = select(Desktop, Pool).join(Pool).order_by(Pool.name, Desktop.id)  # type: ignore[arg-type]
    if pool_id is not None:
        query = query.where(Desktop.pool_id == pool_id)
    return list(session.exec(query).all())


def using_image(*, session: Session, image_id: int) -> list[Desktop]:
    return list(session.exec(select(Desktop).where(Desktop.image_id == image_id)))


def create(*, session: Session, desktop: Desktop) -> Desktop:
    return create_all(session=session, desktops=[desktop])[0]


def create_all(*, session: Session, desktops: list[Desktop]) -> list[Desktop]:
    """DESKTOPS written at once (one flush), with their ids."""
    session.add_all(desktops)
    session.flush()
    return desktops


def set_state(*, session: Session, desktop: Desktop, state: DesktopState, now: datetime,
              reason: str | None = None) -> Desktop:
    """Move along an allowed lifecycle edge (refuses any other). A new state starts with a clean
    slate: failures of steps in the old one no longer hold it back."""
    set_states(session=session, desktops=[desktop], state=state, now=now, reason=reason)
    return desktop


def set_states(*, session: Session, desktops: list[Desktop], state: DesktopState, now: datetime,
               reason: str | None = None) -> None:
    """`set_state` for each of DESKTOPS, written at once (one flush); all or none move."""
    for desktop in desktops:
        check_transition(desktop.state, state)
    for desktop in desktops:
        if desktop.state != state:
            desktop.state_since = now
            desktop.failures, desktop.retry_at = 0, None
        desktop.state = state
        desktop.reason = reason
    session.add_all(desktops)
    session.flush()


def mark_rebuild(*, session: Session, desktop: Desktop, image_id: int, now: datetime, reason: str) -> Desktop:
    """Clone DESKTOP again from IMAGE_ID: a new generation, provisioning from NOW. Only the row
    changes; the reconciler sees a domain of an older generation and recreates it."""
    if desktop.state != DesktopState.PROVISIONING:
        set_state(session=session, desktop=desktop, state=DesktopState.PROVISIONING, now=now, reason=reason)
    desktop.generation += 1
    desktop.image_id = image_id
    desktop.state_since = now
    session.add(desktop)
    return desktop


def note_disk(*, session: Session, desktop_id: int, path: str) -> None:
    """Record where the desktop's overlay is (one statement: a step that just made it need not
    read the row again; a row already saying so is not written)."""
    session.execute(update(Desktop).where(col(Desktop.id) == desktop_id, or_(col(Desktop.disk_path).is_(None),
                                                                               col(Desktop.disk_path) != path))
                    .values(disk_path=path))


def note_failure(*, session: Session, desktop: Desktop, retry_at: datetime) -> Desktop:
    """One more failed step in a row; the reconciler leaves the desktop alone until RETRY_AT."""
    desktop.failures += 1
    desktop.retry_at = retry_at
    session.add(desktop)
    session.flush()
    return desktop


def clear_failures(*, session: Session, desktop_id: int) -> None:
    """A step succeeded: no more back-off. Looked at first, so that the usual case (no failures)
    stays a read: an UPDATE, even of no row, makes the transaction a writer (SQLite's one write
    lock, and the fencing check of the reconciler's lease)."""
    failed = session.exec(select(Desktop.failures).where(Desktop.id == desktop_id)).first()
    if failed:
        session.execute(update(Desktop).where(col(Desktop.id) == desktop_id, col(Desktop.failures) > 0)
                        .values(failures=0, retry_at=None))


def unassign(*, session: Session, desktop: Desktop) -> Desktop:
    """Forget whose desktop this is (and the disconnect grace that went with the assignment)."""
    desktop.assigned_to = None
    desktop.grace_until = None
    session.add(desktop)
    session.flush()
    return desktop


def delete(*, session: Session, desktop: Desktop) -> None:
    session.delete(desktop)
    session.flush()


def lock(*, session: Session, desktop_id: int) -> Desktop | None:
    """The desktop row, locked until the transaction ends (SELECT ... FOR UPDATE where the database
    supports it; SQLite serialises writers anyway), so two sessions ending at once both see the truth."""
    return session.exec(select(Desktop).where(Desktop.id == desktop_id).with_for_update()).first()


def assign_address(*, session: Session, desktop: Desktop, network: DesktopNetwork) -> IPv4Address:
    """DESKTOP's address on its host's desktop network: the one it has, else the lowest free one.
    A unique index on (host, address) makes a second claim of one address fail, never succeed."""
    if desktop.ipv4 is not None:
        return IPv4Address(desktop.ipv4)
    taken = session.exec(select(Desktop.ipv4).where(Desktop.host_id == desktop.host_id,
                                                    col(Desktop.ipv4).is_not(None)))
    address = allocate(network, (IPv4Address(a) for a in taken if a is not None))
    desktop.ipv4 = str(address)
    session.add(desktop)
    session.flush()
    return address


def addresses(*, session: Session, host_id: int) -> dict[str, IPv4Address]:
    """Every desktop of HOST that has an address, by name: what the host network admits."""
    rows = session.exec(select(Desktop.name, Desktop.ipv4).where(Desktop.host_id == host_id,
                                                               col(Desktop.ipv4).is_not(None)))
    return {name: IPv4Address(ipv4) for name, ipv4 in rows if ipv4 is not None}


def count_by_place(*, session: Session) -> list[tuple[str, str, str, int]]:
    """(pool, host, state, how many) for every combination that has desktops."""
    rows = session.execute(
        select(Pool.name, Host.name, Desktop.state, func.count())  # type: ignore[call-overload]
        .join(Pool, col(Pool.id) == col(Desktop.pool_id)).join(Host, col(Host.id) == col(Desktop.host_id))
        .group_by(Pool.name, Host.name, Desktop.state))
    return [(pool, host, str(getattr(state, "value", state)), n) for pool, host, state, n in rows]
