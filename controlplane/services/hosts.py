"""Hosts: each libvirt connection the control plane drives is a row (one, for now)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import select

from controlplane.db.engine import session_scope
from controlplane.db.models import Host


def ensure(engine: Engine, *, name: str, uri: str) -> int:
    with session_scope(engine) as session:
        host = session.exec(select(Host).where(Host.name == name)).first()
        if host is None:
            host = Host(name=name, uri=uri)
            session.add(host)
            session.flush()
        elif host.uri != uri:
            host.uri = uri
            session.add(host)
        return host.id or 0
