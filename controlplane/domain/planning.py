"""Pool planning: compare what the database wants with what libvirt has, and list the steps.

`plan()` is a pure function of plain values, so every convergence rule is unit-tested without
a hypervisor. The reconciler calls it on each pass with fresh observations and performs the
steps; because the plan is recomputed from the world every time, a crash between two steps
costs nothing but a repeated (idempotent) step.

Every action that moves a desktop moves it along an edge of `desktop.ALLOWED` (a property test
holds the two together), so no plan can loop on a refused transition. A desktop whose last step
failed with a TemporaryError waits until its `retry_at` (exponential back-off, `backoff()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.domain.desktop import ACTIVE, DesktopState
from controlplane.domain.ports import ObservedDomain

S = DesktopState
QUARANTINE = "guest quarantined"  # how a quarantined desktop's reason begins (services/sessions.py tells its agent)


@dataclass(frozen=True)
class PoolView:
    id: int
    name: str
    target: int
    min_size: int
    max_size: int
    deleting: bool = False

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
    generation: int = 1
    grace_until: datetime | None = None
    retry_at: datetime | None = None  # its last step failed: leave it alone until then


@dataclass(frozen=True)
class Limits:
    boot_timeout: timedelta = timedelta(seconds=600)  # a browser desktop's cold boot takes minutes under TCG
    # a restored clone confirms its identity and applies its app allowlist by then (seconds, but a
    # TCG guest on a busy host is slow to start the allowlist's helper)
    identity_timeout: timedelta = timedelta(seconds=90)
    template_wait: timedelta = timedelta(seconds=300)  # an instant desktop waits this long for its template
    failure_budget: int = 3
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
    pool_id: int


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
    """Remove domain and overlay, then the row. Each part tolerates being gone already."""

    desktop_id: int


@dataclass(frozen=True)
class Adopt:
    """A tagged domain the database does not know, of a pool that needs it: take it back."""

    name: str
    pool_id: int


@dataclass(frozen=True)
class RemoveOrphan:
    """A tagged domain or overlay no desktop row explains: remove every trace."""

    name: str


@dataclass(frozen=True)
class DropPool:
    pool_id: int


Action = (
    CreateDesktop | Provision | MarkReady | MarkFailed | StartDomain | Repair | Recycle | Recreate | Drain
    | Delete | Teardown | Adopt | RemoveOrphan | DropPool
)


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    booting: int = 0  # desktops started and waited for: nothing to do, but not converged either
    retry_at: datetime | None = None  # the earliest moment a desktop backing off is due again
    template_steps: int = 0  # instant-clone template steps taken in the same pass (services/templates.py)
    rollouts: int = 0  # image rollouts in progress: they wait (soak, sessions) at the normal period

    @property
    def pending(self) -> bool:
        """True while the world is still moving (so the reconciler should come back soon)."""
        return bool(self.actions) or self.booting > 0 or self.retry_at is not None or self.template_steps > 0


def plan(
    pools: list[PoolView],
    desktops: list[DesktopView],
    domains: dict[str, ObservedDomain],
    overlays: set[str],
    now: datetime,
    limits: Limits = Limits(),
    computers: set[str] | None = None,
) -> Plan:
    """Steps that move the world towards the database's wishes. Pure and deterministic.

    COMPUTERS are the desktops' AD computer accounts, or None when no directory is configured."""
    out = Plan()
    by_pool = {p.id: p for p in pools}
    known = {d.name for d in desktops}
    for desktop in desktops:
        if desktop.retry_at is not None and desktop.retry_at > now:
            out.retry_at = min(out.retry_at or desktop.retry_at, desktop.retry_at)
            continue
        out.actions.extend(_desktop_steps(desktop, by_pool.get(desktop.pool_id), domains, overlays,
                                          now, limits, computers))
    out.booting = sum(1 for d in desktops if d.state == S.PROVISIONING)
    adopted = _orphan_steps(pools, desktops, domains, overlays, computers or set(), known, out)
    for pool in pools:
        out.actions.extend(_size_steps(pool, [d for d in desktops if d.pool_id == pool.id],
                                       adopted.get(pool.id, 0), limits))
    return out


def _desktop_steps(d: DesktopView, pool: PoolView | None, domains: dict[str, ObservedDomain],
                   overlays: set[str], now: datetime, limits: Limits,
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


def _orphan_steps(pools: list[PoolView], desktops: list[DesktopView],
                  domains: dict[str, ObservedDomain], overlays: set[str], computers: set[str], known: set[str],
                  out: Plan) -> dict[int, int]:
    """Adopt tagged domains a live pool still needs; remove every other unknown trace."""
    by_name = {p.name: p for p in pools}
    active = {p.id: sum(1 for d in desktops if d.pool_id == p.id and d.state in ACTIVE) for p in pools}
    adopted: dict[int, int] = {}
    for name in sorted(set(domains) - known):
        pool = by_name.get(domains[name].pool)
        if pool and not pool.deleting and name in overlays and active[pool.id] < pool.desired:
            out.actions.append(Adopt(name, pool.id))
            active[pool.id] += 1
            adopted[pool.id] = adopted.get(pool.id, 0) + 1
        else:
            out.actions.append(RemoveOrphan(name))
    for name in sorted((overlays | computers) - known - set(domains)):  # overlays, computer accounts
        out.actions.append(RemoveOrphan(name))
    return adopted


def _size_steps(pool: PoolView, mine: list[DesktopView], adopted: int, limits: Limits) -> list[Action]:
    if pool.deleting:
        return [] if mine else [DropPool(pool.id)]
    active = [d for d in mine if d.state in ACTIVE]
    have = len(active) + adopted
    if have < pool.desired:
        failed = sum(1 for d in mine if d.state == S.FAILED)
        if failed >= limits.failure_budget:
            return []  # something is wrong with the image or host: stop burning resources
        room = max(0, pool.max_size - len([d for d in mine if d.state != S.DELETING]) - adopted)
        return [CreateDesktop(pool.id) for _ in range(min(pool.desired - have, room))]
    if have > pool.desired:
        return [_shrink(d) for d in _victims(active)[: have - pool.desired]]
    return []


def _victims(active: list[DesktopView]) -> list[DesktopView]:
    """Cheapest to lose first: still booting, then idle, newest first; sessions last."""
    rank = {S.PROVISIONING: 0, S.READY: 1, S.IN_USE: 2}
    return sorted(active, key=lambda d: (rank[d.state], -d.since.timestamp(), -d.id))


def _shrink(d: DesktopView) -> Action:
    return Drain(d.id) if d.state == S.IN_USE else Delete(d.id)
