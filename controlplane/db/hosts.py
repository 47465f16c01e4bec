"""Host repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from controlplane.db.models import Host
from controlplane.domain.placement import HostMode
from controlplane.errors import NotFound


def get(*, session: Session, host_id: int) -> Host | None:
    return session.get(Host, host_id)


def get_by_name(*, session: Session, name: str) -> Host | None:
    return session.exec(select(Host).where(Host.name == name)).first()


def get_by_uri(*, session: Session, uri: str) -> Host | None:
    return session.exec(select(Host).where(Host.uri == uri)).first()


def get_or_raise(*, session: Session, name: str) -> Host:
    host = get_by_name(session=session, name=name)
    if host is None:
        raise NotFound(f"host {name!r} is not registered", field="host")
    return host


def list_all(*, session: Session) -> list[Host]:
    return list(session.exec(select(Host).order_by(Host.name)))


def create(*, session: Session, host: Host) -> Host:
    session.add(host)
    session.flush()
    return host


def set_mode(*, session: Session, host: Host, mode: HostMode, now: datetime) -> None:
    host.mode, host.mode_since = mode, now
    session.add(host)
    session.flush()
