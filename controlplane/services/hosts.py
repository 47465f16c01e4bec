"""Hosts: the libvirt hosts desktops run on. Registered by URI, put in maintenance or back to
active by an admin (audited), and observed afresh on every reconcile pass.

Whether a host answers is never stored: each pass asks its hypervisor, and a host that does not
answer is planned as unknown (its desktops are left as they are; nothing new goes there).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.db import audit, leases
from controlplane.db import hosts as repo
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Host, Pool
from controlplane.domain.placement import HostMode
from controlplane.domain.planning import HostView
from controlplane.domain.ports import HostCapacity, ObservedTemplate, TemplateKey
from controlplane.errors import Conflict, HostAgentUnreachable, InvalidInput, ShiftDeskError
from controlplane.services import host_agent
from controlplane.services.context import Context
from controlplane.services.views import HostPublic, HostState

log = logging.getLogger(__name__)
# A host view asks every hypervisor at once and waits this long: a dead host holds a call until
# libvirt's keepalive gives up (about 15 s), and the admin looks at the hosts page exactly then.
ANSWER_S = 3.0
_ASKING: dict[tuple[int, int], tuple[Context, Future[HostCapacity]]] = {}  # (context, host id): its ask
_ASKING_LOCK = threading.Lock()
NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
SCHEMES = ("qemu:///system", "qemu+tls://", "qemu+ssh://", "test:///", "fake://")


@dataclass(frozen=True)
class HostRef:
    """A registered host, as a pass starts from it."""

    id: int
    name: str
    uri: str
    mode: HostMode
    fenced: bool = False


def ensure(engine: Engine, *, name: str, uri: str) -> int:
    """The row of this control plane's own host (made at start; its URI follows the settings).
    Refused, naming the setting, when another host has that URI: one libvirt registered under two
    names would have each host's desktops taken for copies on the other and removed."""
    with session_scope(engine) as session:
        other = repo.get_by_uri(session=session, uri=uri)
        if other is not None and other.name != name:
            raise InvalidInput(f"libvirt.host_name: {uri} is registered as host {other.name!r}, not {name!r}; "
                               f"set SHIFTDESK_LIBVIRT__HOST_NAME={other.name} (replicas sharing a host use its name)",
                               field="libvirt.host_name")
        host = repo.get_by_name(session=session, name=name)
        if host is None:
            host = repo.create(session=session, host=Host(name=name, uri=uri))
        elif host.uri != uri:
            host.uri = uri
            session.add(host)
        return host.id or 0


def registered(session: Session) -> list[HostRef]:
    return [_ref(h) for h in repo.list_all(session=session)]


def _ref(host: Host) -> HostRef:
    return HostRef(host.id or 0, host.name, host.uri, HostMode(host.mode), host.fenced_at is not None)


def register(ctx: Context, *, name: str, uri: str, actor: str) -> HostRef:
    """Register a host by NAME and libvirt URI (audited). Refused, naming the field, if the name
    or URI is malformed or already taken; nothing changes then."""
    if not NAME.fullmatch(name):
        raise InvalidInput("name: lower-case letters, digits, dots and dashes, at most 63", field="name")
    if not uri.startswith(SCHEMES) or any(c.isspace() for c in uri):
        raise InvalidInput(f"uri: a libvirt URI starting with one of {', '.join(SCHEMES)}", field="uri")
    with session_scope(ctx.engine) as session:
        if repo.get_by_name(session=session, name=name) is not None:
            raise Conflict(f"name: host {name!r} is already registered", field="name")
        if repo.get_by_uri(session=session, uri=uri) is not None:
            raise Conflict(f"uri: {uri} is already registered", field="uri")
        host = repo.create(session=session, host=Host(name=name, uri=uri, mode_since=ctx.clock.now()))
        audit.append(session=session, actor=actor, action="host.register", target=name, uri=uri)
        return _ref(host)


def set_mode(ctx: Context, *, name: str, mode: HostMode, actor: str) -> HostRef:
    """Put a host in maintenance (nothing new is placed there; its idle desktops move away) or
    back to active. Audited when it changes anything."""
    with session_scope(ctx.engine) as session:
        host = repo.get_or_raise(session=session, name=name)
        if host.mode != mode:
            repo.set_mode(session=session, host=host, mode=mode, now=ctx.clock.now())
            audit.append(session=session, actor=actor, action=f"host.{mode.value}", target=name)
        return _ref(host)


def parse_mode(text: str) -> HostMode:
    try:
        return HostMode(text)
    except ValueError:
        raise InvalidInput(f"mode: one of {', '.join(m.value for m in HostMode)}, not {text!r}",
                           field="mode") from None


@dataclass(frozen=True)
class ObservedHost:
    """One host as a pass found it: the planner's view of it and its templates (None while it
    does not answer)."""

    ref: HostRef
    view: HostView
    templates: Mapping[TemplateKey, ObservedTemplate] | None = None


def observe(ctx: Context, host: HostRef) -> ObservedHost:
    """What HOST's hypervisor says now, from one look at its domains. A host that does not answer
    is a view without domains, fenced once its host agent's lease ran out a further TTL ago (see
    services/host_agent.py: by then the agent has powered its desktops off, or the host is dead).
    Reads only: the active reconciler records fencing and recovery (`note_fencing`)."""
    try:
        seen = ctx.driver(host.id).observe()
    except ShiftDeskError as err:  # (its libvirt answering without its agent proves it alive: never fenced)
        return ObservedHost(host, HostView(id=host.id, name=host.name, mode=host.mode, down_reason=str(err),
                                           fenced=not isinstance(err, HostAgentUnreachable) and _dead(ctx, host)))
    saved = frozenset(k for k, t in seen.templates.items() if t.saved)
    return ObservedHost(host, HostView(id=host.id, name=host.name, mode=host.mode, domains=seen.desktops,
                                       overlays=seen.overlays, capacity=seen.capacity, templates=saved,
                                       images=seen.images),
                        seen.templates)


def _dead(ctx: Context, host: HostRef) -> bool:
    """Fenced already, or its host agent's lease ran out a TTL ago (a host that never had an agent
    is never taken for dead: nothing proves it)."""
    if host.fenced:
        return True
    with session_scope(ctx.engine) as session:
        lease = leases.get(session=session, name=host_agent.lease_name(host.name))
    return lease is not None and lease.expires_at + ctx.limits.host_lease_ttl <= ctx.clock.now()


def note_fencing(ctx: Context, seen: Sequence[ObservedHost]) -> None:
    """Record what this pass found (the active reconciler's job): hosts fenced now (`fenced_at`,
    audited once) and fenced hosts that answer again (recovered; what they still hold is removed
    as orphans)."""
    for ref, view in ((h.ref, h.view) for h in seen):
        if view.fenced == ref.fenced:
            continue
        with session_scope(ctx.engine) as session:
            row = repo.get(session=session, host_id=ref.id)
            if row is None:
                continue
            row.fenced_at = ctx.clock.now() if view.fenced else None
            session.add(row)
            if view.fenced:
                audit.append(session=session, actor="reconciler", action="host.fenced", target=ref.name,
                             reason=(view.down_reason or "")[:300])
            else:
                audit.append(session=session, actor="reconciler", action="host.recovered", target=ref.name)
        if view.fenced:
            log.error("host %s fenced: not answering (%s) and its lease ran out", ref.name, view.down_reason)
        else:
            log.warning("host %s answers again after fencing; what it still holds is removed as orphans", ref.name)


def views(ctx: Context, name: str | None = None) -> list[HostPublic]:
    """Every host (or host NAME) with what it has (asked of its hypervisor now), what its desktops
    take (their pools' vCPUs and memory) and its desktops by state. A host this control plane
    cannot reach is `down`, with why."""
    with session_scope(ctx.engine) as session:
        if name is not None:
            repo.get_or_raise(session=session, name=name)
        rows = session.exec(select(Desktop.host_id, Desktop.state, Pool.vcpus, Pool.memory_mib)  # type: ignore[call-overload]
                            .join(Pool, col(Desktop.pool_id) == col(Pool.id))).all()
        refs = [h for h in registered(session) if name is None or h.name == name]
    by_host: dict[int, list[tuple]] = {}
    for row in rows:
        by_host.setdefault(row[0], []).append(row)
    asked = {host.id: _ask(ctx, host.id) for host in refs}
    wait(asked.values(), timeout=ANSWER_S)
    return [_view(host, asked[host.id], by_host.get(host.id, [])) for host in refs]


def view(ctx: Context, name: str) -> HostPublic:
    return views(ctx, name)[0]


def _ask(ctx: Context, host_id: int) -> Future[HostCapacity]:
    """HOST_ID's capacity, asked in a daemon thread: a hung host must not keep a process (the CLI's
    `host ls`) from exiting, as a thread pool's worker would (they are joined at exit). An ask
    still under way is shared, so a dead host holds one thread however often the page reloads."""
    key = (id(ctx), host_id)
    with _ASKING_LOCK:
        under_way = _ASKING.get(key)
        if under_way is not None:
            return under_way[1]
        future: Future[HostCapacity] = Future()
        _ASKING[key] = (ctx, future)  # holds CTX: its id is not reused while asked
    threading.Thread(target=_answer, args=(ctx, host_id, key, future), name=f"host-view-{host_id}",
                     daemon=True).start()
    return future


def _answer(ctx: Context, host_id: int, key: tuple[int, int], future: Future[HostCapacity]) -> None:
    try:
        future.set_result(ctx.driver(host_id).capacity())
    except BaseException as err:  # noqa: BLE001 - handed to the view, which says what it was
        future.set_exception(err)
    finally:
        with _ASKING_LOCK:
            _ASKING.pop(key, None)


def _view(host: HostRef, asked: Future[HostCapacity], rows: list[tuple]) -> HostPublic:
    capacity: HostCapacity | None = None
    reason: str | None = None
    if not asked.done():
        state, reason = HostState.DOWN, f"its hypervisor did not answer within {ANSWER_S:g} s"
    elif isinstance(err := asked.exception(), ShiftDeskError):
        state, reason = HostState.DOWN, str(err)
    else:
        capacity, state = asked.result(), HostState.ACTIVE  # raises what is not a ShiftDeskError
    return HostPublic(id=host.id, name=host.name, uri=host.uri, mode=host.mode, state=state, reason=reason,
                      capacity=capacity, committed_vcpus=sum(r[2] for r in rows),
                      committed_memory_mib=sum(r[3] for r in rows),
                      desktops=dict(sorted(Counter(str(r[1]) for r in rows).items())))
