"""Pool planning: compare what the database wants with what each host has, and list the steps.

`plan()` is a pure function of plain values, so every convergence rule is unit-tested without
a hypervisor. The reconciler calls it on each pass with fresh observations and performs the
steps; because the plan is recomputed from the world every time, a crash between two steps
costs nothing but a repeated (idempotent) step.

Every action that moves a desktop moves it along an edge of `desktop.ALLOWED` (a property test
holds the two together), so no plan can loop on a refused transition. A desktop whose last step
failed with a TemporaryError waits until its `retry_at` (exponential back-off, `backoff()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.domain import placement
from controlplane.domain.desktop import ACTIVE, DesktopState
from controlplane.domain.placement import HostLoad, HostMode, Ratios, Shape, Unplaceable
from controlplane.domain.ports import HostCapacity, ObservedDomain, TemplateKey

S = DesktopState
QUARANTINE = "guest quarantined"  # how a quarantined desktop's reason begins (services/sessions.py tells its agent)
HOST_FAILED = "host failed"  # how the reason of a desktop whose host was fenced begins (its agent is told)


@dataclass(frozen=True)
class PoolView:
    id: int
    name: str
    target: int
    min_size: int
    max_size: int
    deleting: bool = False
    memory_mib: int = 256
    vcpus: int = 1
    template: TemplateKey | None = None  # it clones from this template (placement prefers hosts having it)
    image: str | None = None  # its golden image's sha256 (placement takes only hosts that have it)

    @property
    def desired(self) -> int:
        return 0 if self.deleting else bounded_size(self.target, self.min_size, self.max_size)


def bounded_size(target: int, min_size: int, max_size: int) -> int:
    """A pool's size as asked, held within its bounds."""
    return max(min_size, min(max_size, target))


@dataclass(frozen=True)
class DesktopView:
    id: int
    name: str
    pool_id: int
    state: DesktopState
    since: datetime
    host_id: int
    generation: int = 1
    grace_until: datetime | None = None
    retry_at: datetime | None = None  # its last step failed: leave it alone until then


@dataclass(frozen=True)
class HostView:
    """One host as this pass found it. DOMAINS is None when its hypervisor did not answer: then
    nothing is known of its desktops, and nothing is done to them or placed on it."""

    id: int
    name: str
    mode: HostMode = HostMode.ACTIVE
    domains: Mapping[str, ObservedDomain] | None = None
    overlays: frozenset[str] = frozenset()
    capacity: HostCapacity | None = None
    templates: frozenset[TemplateKey] = frozenset()  # saved instant-clone templates
    images: frozenset[str] | None = None  # sha256 of the golden images it has (None: not known)
    down_reason: str | None = None
    fenced: bool = False  # it stopped answering and its lease ran out: its desktops are given up


@dataclass(frozen=True)
class Limits:
    boot_timeout: timedelta = timedelta(seconds=600)  # a browser desktop's cold boot takes minutes under TCG
    # a restored clone confirms its identity and applies its app allowlist by then (seconds, but a
    # TCG guest on a busy host is slow to start the allowlist's helper)
    identity_timeout: timedelta = timedelta(seconds=90)
    template_wait: timedelta = timedelta(seconds=300)  # an instant desktop waits this long for its template
    failure_budget: int = 3
    ratios: Ratios = Ratios()  # how far placement may commit a host beyond what it has
    host_lease_ttl: timedelta = timedelta(seconds=30)  # a silent host is fenced this long after its lease ran out
    min_retry_delay: timedelta = timedelta(seconds=1)
    max_retry_delay: timedelta = timedelta(seconds=300)


def backoff(delay: float, failures: int, limits: Limits = Limits()) -> timedelta:
    """How long a desktop waits after its FAILURES-th failure in a row of a step that asked for DELAY
    seconds: the delay (at least `min_retry_delay`), doubled per further failure, at most
    `max_retry_delay`."""
    base = max(timedelta(seconds=delay), limits.min_retry_delay)
    return min(base * 2 ** min(max(failures - 1, 0), 32), limits.max_retry_delay)


# --- actions: one small idempotent step each -------------------------------------------------


@dataclass(frozen=True)
class CreateDesktop:
    """A new desktop of the pool, on the host placement chose."""

    pool_id: int
    host_id: int


@dataclass(frozen=True)
class Provision:
    """Ensure overlay, definition and a running domain for a provisioning desktop.

    `fresh`: no domain exists yet, so a computer account and join secret are made first."""

    desktop_id: int
    fresh: bool = True


@dataclass(frozen=True)
class MarkReady:
    desktop_id: int


@dataclass(frozen=True)
class MarkFailed:
    desktop_id: int
    reason: str


@dataclass(frozen=True)
class StartDomain:
    desktop_id: int


@dataclass(frozen=True)
class Repair:
    """An idle (ready) desktop lacks part of itself in libvirt or the directory, or is not running:
    back to provisioning (so it is never handed out meanwhile) until it reports ready again."""

    desktop_id: int
    reason: str


@dataclass(frozen=True)
class Recycle:
    """The domain or disk of a desktop in a session vanished: the agent's work is gone with it.
    Free the assignment and delete the desktop (never re-provision one agent's disk for the
    next); the pool's size brings a fresh one and the agent gets it on reconnect."""

    desktop_id: int
    reason: str


@dataclass(frozen=True)
class Recreate:
    """The domain is of an older generation (a rebuild was asked): remove it and its overlay."""

    desktop_id: int


@dataclass(frozen=True)
class Drain:
    desktop_id: int


@dataclass(frozen=True)
class Delete:
    """Mark for deletion (the next pass tears it down)."""

    desktop_id: int


@dataclass(frozen=True)
class Teardown:
    """Remove domain and overlay, then the row. Each part tolerates being gone already.
    HOST_GONE: its host was fenced; nothing is asked of it (its traces go when it returns)."""

    desktop_id: int
    host_gone: bool = False


@dataclass(frozen=True)
class Evacuate:
    """The desktop's host was fenced: give the desktop up (its agent's assignment too, with the
    reason); its pool's size brings a fresh one on another host."""

    desktop_id: int
    reason: str


@dataclass(frozen=True)
class Adopt:
    """A tagged domain the database does not know, of a pool that needs it: take it back."""

    name: str
    pool_id: int
    host_id: int


@dataclass(frozen=True)
class RemoveOrphan:
    """A tagged domain or overlay no desktop row of its host explains: remove every trace on that
    host (a copy of a desktop that lives on another host loses only its copy). HOST_ID None: a
    computer account in the directory with no desktop anywhere."""

    name: str
    host_id: int | None


@dataclass(frozen=True)
class DropPool:
    pool_id: int


Action = (
    CreateDesktop | Provision | MarkReady | MarkFailed | StartDomain | Repair | Recycle | Recreate | Drain
    | Delete | Teardown | Evacuate | Adopt | RemoveOrphan | DropPool
)
# the steps that act on one desktop (each has its desktop_id)
DESKTOP_STEPS = (Provision, MarkReady, MarkFailed, StartDomain, Repair, Recycle, Recreate, Drain, Delete, Teardown,
                 Evacuate)


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    booting: int = 0  # desktops started and waited for: nothing to do, but not converged either
    retry_at: datetime | None = None  # the earliest moment a desktop backing off is due again
    template_steps: int = 0  # instant-clone template steps taken in the same pass (services/templates.py)
    rollouts: int = 0  # image rollouts in progress: they wait (soak, sessions) at the normal period
    unobserved: int = 0  # desktops on hosts that did not answer: left as they are this pass
    unplaceable: dict[int, str] = field(default_factory=dict)  # pool id -> why no host takes its next desktop

    @property
    def pending(self) -> bool:
        """True while the world is still moving (so the reconciler should come back soon)."""
        return bool(self.actions) or self.booting > 0 or self.retry_at is not None or self.template_steps > 0


def plan(
    pools: list[PoolView],
    desktops: list[DesktopView],
    hosts: Sequence[HostView],
    now: datetime,
    limits: Limits = Limits(),
    computers: set[str] | None = None,
) -> Plan:
    """Steps that move the world towards the database's wishes. Pure and deterministic.

    Each desktop is compared with what its own host reports; a desktop whose host did not answer
    is left alone (it may still be running there: only fencing may give it up). COMPUTERS are the
    desktops' AD computer accounts, or None when no directory is configured."""
    out = Plan()
    by_pool = {p.id: p for p in pools}
    by_host = {h.id: h for h in hosts}
    for desktop in desktops:
        host = by_host.get(desktop.host_id)
        if host is not None and host.fenced:
            out.actions.append(_evacuate(desktop, host))
            continue
        if host is None or host.domains is None:
            out.unobserved += 1
            continue
        if desktop.retry_at is not None and desktop.retry_at > now:
            out.retry_at = min(out.retry_at or desktop.retry_at, desktop.retry_at)
            continue
        out.actions.extend(_desktop_steps(desktop, by_pool.get(desktop.pool_id), host.domains, host.overlays,
                                          now, limits, computers))
    out.booting = sum(1 for d in desktops if d.state == S.PROVISIONING)
    of_pool, of_host = _grouped(desktops, "pool_id"), _grouped(desktops, "host_id")
    adopted = _orphan_steps(pools, desktops, of_pool, hosts, of_host, computers or set(), out)
    loads = _loads(hosts, of_host, by_pool)
    leaving = _leaving(desktops, by_host)
    claimed = _claimed(out.actions)
    for pool in pools:
        out.actions.extend(_size_steps(pool, of_pool.get(pool.id, []), adopted.get(pool.id, 0), limits, loads,
                                       leaving, claimed, out))
    return out


def _claimed(actions: list[Action]) -> dict[int, bool]:
    """The desktops that already have their step this pass, each with whether that step removes
    it from its pool. A pass performs its steps at once, so sizing never gives one of these a
    second step (two for one desktop would race), and shrinks by one fewer for each removed one."""
    return {a.desktop_id: isinstance(a, (Delete, Recycle, Evacuate, MarkFailed))
            for a in actions if isinstance(a, DESKTOP_STEPS)}


def _grouped(desktops: list[DesktopView], key: str) -> dict[int, list[DesktopView]]:
    """DESKTOPS by their pool or host id, in their order (one pass: a plan over 10,000 desktops
    must not scan them once per pool and once per host)."""
    out: dict[int, list[DesktopView]] = {}
    for d in desktops:
        out.setdefault(getattr(d, key), []).append(d)
    return out


def _evacuate(d: DesktopView, host: HostView) -> Action:
    """A desktop of a fenced host: given up (deleting, with why), then its row removed without a
    word to the host. Fencing made sure it runs nowhere: the host stopped it or is dead."""
    if d.state == S.DELETING:
        return Teardown(d.id, host_gone=True)
    return Evacuate(d.id, f"{HOST_FAILED}: {host.name} stopped answering and was fenced")


def _desktop_steps(d: DesktopView, pool: PoolView | None, domains: Mapping[str, ObservedDomain],
                   overlays: frozenset[str], now: datetime, limits: Limits,
                   computers: set[str] | None) -> list[Action]:
    dom = domains.get(d.name)
    no_computer = computers is not None and d.name not in computers
    if d.state == S.DELETING:
        return [Teardown(d.id)]
    if pool is None or pool.deleting:
        if d.state == S.IN_USE:
            return [Drain(d.id)]
        if d.state == S.DRAINING and (d.grace_until is None or d.grace_until >= now):
            return []  # waits for its session to end, as in a ramp-down
        return [Delete(d.id)]
    if dom is not None and dom.quarantined and d.state in (S.PROVISIONING, S.READY, S.IN_USE, S.DRAINING):
        return [_quarantine(d, dom.quarantined)]
    if d.state == S.PROVISIONING:
        if dom is not None and (dom.generation != d.generation or no_computer):
            return [Recreate(d.id)]  # older generation, or its join secret died with its computer account
        if dom is not None and dom.ready:
            return [MarkReady(d.id)]
        if dom is not None and dom.cloned and dom.running and now - d.since > limits.identity_timeout:
            waited = int(limits.identity_timeout.total_seconds())
            return [MarkFailed(d.id, f"clone was not ready (identity, app allowlist) {waited} s after restore")]
        # a desktop with no domain yet may be waiting for its template to boot first: twice the time
        timeout = limits.boot_timeout * (2 if dom is None else 1)
        if now - d.since > timeout:
            return [MarkFailed(d.id, f"not ready {int(timeout.total_seconds())} s after start")]
        if dom is None or not dom.running or d.name not in overlays:
            return [Provision(d.id, fresh=dom is None)]
        return []  # booting: wait
    if d.state in (S.READY, S.IN_USE, S.DRAINING):
        if dom is None or d.name not in overlays:
            what = "domain" if dom is None else "overlay"
            if d.state != S.READY:
                return [Recycle(d.id, f"{what} missing in libvirt")]
            return [Repair(d.id, f"{what} missing in libvirt")]
        if no_computer and d.state == S.READY:  # a desktop in a session keeps going until it ends
            return [Repair(d.id, "computer account missing in the directory")]
        if not dom.running:  # powered off: an idle one is not ready again until it says so
            return [StartDomain(d.id)] if d.state != S.READY else [Repair(d.id, "domain was not running")]
        if d.state in (S.IN_USE, S.DRAINING) and d.grace_until is not None and d.grace_until < now:
            return [Delete(d.id)]  # nobody came back within the grace period: recycle, never hand over
        if d.state == S.DRAINING:
            return []  # waits for its session to end
    return []


def _quarantine(d: DesktopView, why: str) -> Action:
    """A guest the host stopped trusting is never handed out again: a booting one fails, an idle
    one is deleted, one in a session is recycled (its agent gets a fresh desktop on reconnect)."""
    reason = f"{QUARANTINE}: {why}"
    if d.state == S.PROVISIONING:
        return MarkFailed(d.id, reason)
    if d.state == S.READY:
        return Delete(d.id)
    return Recycle(d.id, reason)


def _orphan_steps(pools: list[PoolView], desktops: list[DesktopView], of_pool: Mapping[int, list[DesktopView]],
                  hosts: Sequence[HostView], of_host: Mapping[int, list[DesktopView]], computers: set[str],
                  out: Plan) -> dict[int, int]:
    """Adopt tagged domains a live pool still needs; remove every other unknown trace. A domain
    named like a desktop of another host is a stray copy: removed, never adopted (a desktop
    runs on one host)."""
    by_name = {p.name: p for p in pools}
    active = {p.id: sum(1 for d in of_pool.get(p.id, []) if d.state in ACTIVE) for p in pools}
    known = {d.name for d in desktops}
    seen: set[str] = set()
    adopted: dict[int, int] = {}
    for host in sorted(hosts, key=lambda h: h.id):
        if host.domains is None:
            continue
        mine = {d.name for d in of_host.get(host.id, [])}
        seen |= set(host.domains)
        for name in sorted(set(host.domains) - mine):
            pool = by_name.get(host.domains[name].pool)
            if (name not in known and pool and not pool.deleting and name in host.overlays
                    and host.mode == HostMode.ACTIVE and active[pool.id] < pool.desired):
                out.actions.append(Adopt(name, pool.id, host.id))
                active[pool.id] += 1
                adopted[pool.id] = adopted.get(pool.id, 0) + 1
            else:
                out.actions.append(RemoveOrphan(name, host.id))
        for name in sorted(host.overlays - mine - set(host.domains)):
            out.actions.append(RemoveOrphan(name, host.id))
    unobserved = any(h.domains is None and not h.fenced for h in hosts)
    for name in sorted(computers - known - seen):
        if not unobserved:  # its domain may be on the host that did not answer: wait for it
            out.actions.append(RemoveOrphan(name, None))
    return adopted


def _loads(hosts: Sequence[HostView], of_host: Mapping[int, list[DesktopView]],
           pools: Mapping[int, PoolView]) -> dict[int, HostLoad]:
    """What placement sees of each host: what it has, and what its desktops are given (a failed
    desktop's domain is off, so it takes nothing)."""
    loads: dict[int, HostLoad] = {}
    for host in hosts:
        on_host = [d for d in of_host.get(host.id, []) if d.state != S.FAILED and d.pool_id in pools]
        per_pool: dict[int, int] = {}
        for d in on_host:
            if d.state in ACTIVE:
                per_pool[d.pool_id] = per_pool.get(d.pool_id, 0) + 1
        loads[host.id] = HostLoad(
            id=host.id, name=host.name, mode=host.mode,
            capacity=host.capacity if host.domains is not None else None, down_reason=host.down_reason,
            committed_vcpus=sum(pools[d.pool_id].vcpus for d in on_host),
            committed_memory_mib=sum(pools[d.pool_id].memory_mib for d in on_host),
            pool_desktops=per_pool, templates=host.templates, images=host.images)
    return loads


def _leaving(desktops: list[DesktopView], hosts: Mapping[int, HostView]) -> set[int]:
    """Idle desktops (booting or ready) on hosts in maintenance: they move away. Replacements are
    made elsewhere first; each leaves once the pool has a ready desktop to spare for it."""
    return {d.id for d in desktops if d.state in (S.PROVISIONING, S.READY) and d.host_id in hosts
            and hosts[d.host_id].mode == HostMode.MAINTENANCE}


def _size_steps(pool: PoolView, mine: list[DesktopView], adopted: int, limits: Limits,
                loads: dict[int, HostLoad], leaving: set[int], claimed: dict[int, bool], out: Plan) -> list[Action]:
    if pool.deleting:
        return [] if mine else [DropPool(pool.id)]
    active = [d for d in mine if d.state in ACTIVE and d.id not in leaving]
    going = [d for d in mine if d.id in leaving and d.id not in claimed]
    steps: list[Action] = [Delete(d.id) for d in _spare(going, active, pool.desired)]
    have = len(active) + adopted
    if have < pool.desired:
        failed = sum(1 for d in mine if d.state == S.FAILED)
        if failed >= limits.failure_budget:
            return steps  # something is wrong with the image or host: stop burning resources
        room = max(0, pool.max_size - len([d for d in mine if d.state != S.DELETING]) - adopted + len(going))
        return steps + _create(pool, min(pool.desired - have, room), limits, loads, out)
    # a desktop removed by its own step this pass is replaced next pass, but spares a victim now
    have -= sum(1 for d in active if claimed.get(d.id, False))
    if have > pool.desired:
        return steps + [_shrink(d) for d in _victims([d for d in active if d.id not in claimed])[: have - pool.desired]]
    return steps


def _spare(going: list[DesktopView], active: list[DesktopView], desired: int) -> list[DesktopView]:
    """The leaving desktops the pool can spare now: idle desktops beyond what it wants idle, the
    booting ones first, a ready one only while the pool keeps as many ready as it wants idle."""
    need = max(0, desired - sum(1 for d in active if d.state not in (S.PROVISIONING, S.READY)))
    ready = sum(1 for d in active if d.state == S.READY)
    excess = len(going) + sum(1 for d in active if d.state in (S.PROVISIONING, S.READY)) - need
    booting = [d for d in going if d.state == S.PROVISIONING]
    idle = [d for d in going if d.state == S.READY]
    spare_booting = booting[:max(0, excess)]
    spare_ready = max(0, min(excess - len(spare_booting), ready + len(idle) - need))
    return _victims(spare_booting) + _victims(idle)[:spare_ready]


def _create(pool: PoolView, n: int, limits: Limits, loads: dict[int, HostLoad], out: Plan) -> list[Action]:
    """N new desktops of POOL, each placed on a host (and counted there before the next is)."""
    shape = Shape(pool.id, pool.name, pool.memory_mib, pool.vcpus, pool.template, pool.image)
    steps: list[Action] = []
    for _ in range(n):
        chosen = placement.place(shape, list(loads.values()), limits.ratios)
        if isinstance(chosen, Unplaceable):
            out.unplaceable[pool.id] = str(chosen)
            break
        loads[chosen.id] = placement.taken(chosen, shape)
        steps.append(CreateDesktop(pool.id, chosen.id))
    return steps


def _victims(active: list[DesktopView]) -> list[DesktopView]:
    """Cheapest to lose first: still booting, then idle, newest first; sessions last."""
    rank = {S.PROVISIONING: 0, S.READY: 1, S.IN_USE: 2}
    return sorted(active, key=lambda d: (rank[d.state], -d.since.timestamp(), -d.id))


def _shrink(d: DesktopView) -> Action:
    return Drain(d.id) if d.state == S.IN_USE else Delete(d.id)
