"""Hosts: each libvirt connection the control plane drives is a row (one, for now)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Host, Pool
from controlplane.domain.ports import HostCapacity
from controlplane.errors import ShiftDeskError
from controlplane.services.context import Context
from controlplane.services.views import HostPublic, HostState


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


def views(ctx: Context) -> list[HostPublic]:
    """Every host with what it has (asked of its hypervisor now), what its desktops take (their
    pools' vCPUs and memory) and its desktops by state. A host this control plane cannot reach is
    `down`, with why; a host it does not drive yet is `unknown`."""
    with session_scope(ctx.engine) as session:
        hosts = list(session.exec(select(Host).order_by(Host.name)))
        rows = session.exec(select(Desktop.host_id, Desktop.state, Pool.vcpus, Pool.memory_mib)  # type: ignore[call-overload]
                            .join(Pool, col(Desktop.pool_id) == col(Pool.id))).all()
    return [_view(ctx, host, [r for r in rows if r[0] == host.id]) for host in hosts]


def _view(ctx: Context, host: Host, rows: list[tuple]) -> HostPublic:
    capacity: HostCapacity | None = None
    reason: str | None = "not driven by this control plane"
    state = HostState.UNKNOWN
    if host.id == ctx.host_id:
        try:
            capacity, state, reason = ctx.hypervisor.capacity(), HostState.ACTIVE, None
        except ShiftDeskError as err:
            state, reason = HostState.DOWN, str(err)
    return HostPublic(id=host.id or 0, name=host.name, uri=host.uri, state=state, reason=reason,
                      capacity=capacity, committed_vcpus=sum(r[2] for r in rows),
                      committed_memory_mib=sum(r[3] for r in rows),
                      desktops=dict(sorted(Counter(str(r[1]) for r in rows).items())))
