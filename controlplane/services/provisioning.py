"""The reconciler's steps: one small, idempotent function per kind of planned action (STEPS), or
per pass for the kinds that only write rows (BATCHES).

Each step re-reads its row and checks its precondition first (the plan may be a moment old),
then does one thing. Crash points name the lines a crash test kills the process at; a crash
at any of them leaves a state the next plan recognises and finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from controlplane.db import audit, desktops, display_sessions, images, pools, tickets
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain import naming
from controlplane.domain import planning as p
from controlplane.domain.desktop import DesktopState
from controlplane.domain.network import AddressPoolExhausted
from controlplane.domain.policy import Policy
from controlplane.domain.ports import CloneMode, DesktopSpec, Hypervisor, Readiness
from controlplane.domain.rollout import Signal
from controlplane.errors import PermanentError, TemporaryError
from controlplane.services import network, policies, rollouts, telemetry, templates
from controlplane.services.context import Context

S = DesktopState
ACTOR = "reconciler"
TELL_AGENT = timedelta(seconds=30)  # a live session of an evacuated desktop keeps its row this long at most
log = logging.getLogger(__name__)


def spec_for(session: Session, desktop: Desktop, rules: list[Policy]) -> DesktopSpec:
    """What the hypervisor needs for DESKTOP; `template` is set when its pool clones instantly
    and the desktop's image is still the pool's (a template is made for the pool's shape)."""
    pool = session.get(Pool, desktop.pool_id)
    image = images.get_or_raise(session=session, image_id=desktop.image_id)
    assert pool is not None
    instant = pool.clone == CloneMode.INSTANT and pool.image_id == desktop.image_id
    return DesktopSpec(
        name=desktop.name, pool=pool.name, desktop_id=desktop.id or 0, generation=desktop.generation,
        image=templates.boot_image(image), memory_mib=pool.memory_mib, vcpus=pool.vcpus,
        template=templates.key_of(pool, rules) if instant else None,
        share_memory=templates.shares_memory(pool, rules),
    )


@dataclass(frozen=True)
class BringUp:
    """A desktop whose row this pass just wrote: provisioned from the spec read with the row."""

    desktop_id: int
    spec: DesktopSpec
    host_id: int


@dataclass
class Batch:
    """What a batch of one kind of step did: FOLLOW_UP, steps to perform next (each on its own);
    REFUSED, the actions that failed, each with its error (the rest succeeded or had nothing to do)."""

    follow_up: list[BringUp] = field(default_factory=list)
    refused: list[tuple[Any, Exception]] = field(default_factory=list)


def create_desktops(ctx: Context, actions: Sequence[p.CreateDesktop]) -> Batch:
    """The rows of ACTIONS' new desktops in one transaction (a pool deleted since gets none), each
    audited; then each is brought up as its own step. Rows alone are a state the next pass
    finishes (provisioning, no domain yet), so a crash after the commit loses nothing."""
    with session_scope(ctx.engine) as session:
        wanted = [(a, session.get(Pool, a.pool_id)) for a in actions]
        placed = [(a, pool) for a, pool in wanted if pool is not None and not pool.deleting]
        now = ctx.clock.now()
        names = _free_names(session, ctx.instance, [pool.name for _, pool in placed])
        rows = desktops.create_all(session=session, desktops=[Desktop(
            name=name, pool_id=pool.id or 0, host_id=a.host_id, image_id=pool.image_id, created_at=now,
            state_since=now) for (a, pool), name in zip(placed, names, strict=True)])
        audit.append_all(session=session, events=[audit.event(
            actor=ACTOR, action="desktop.create", target=row.name, pool=pool.name, host=row.host_id)
            for row, (_, pool) in zip(rows, placed, strict=True)])
        rules = policies.active_in(session)
        ups = [BringUp(row.id or 0, spec_for(session, row, rules), row.host_id) for row in rows]
    ctx.crashpoint("provision.after-row")
    return Batch(follow_up=ups)


def bring_up(ctx: Context, a: BringUp) -> None:
    _bring_up(ctx, p.Provision(a.desktop_id), a.spec, timedelta(0), a.host_id)


def _free_names(session: Session, instance: str, pool_names: list[str]) -> list[str]:
    """A new name for each of POOL_NAMES' new desktops that no row has and no other in the list.
    Names end in 24 random bits (they become guest host names, kept short), so among thousands of
    desktops a repeat is likely (measured: two in a setup of 4,000): those are drawn again
    instead of failing the steps on the unique index."""
    names = [naming.desktop_name(instance, pool) for pool in pool_names]
    for _ in range(8):
        taken = desktops.names_taken(session=session, names=names)
        seen: set[str] = set()
        clashes = []
        for i, name in enumerate(names):
            if name in taken or name in seen:
                clashes.append(i)
            seen.add(name)
        if not clashes:
            return names
        for i in clashes:
            names[i] = naming.desktop_name(instance, pool_names[i])
    raise TemporaryError(f"pools {', '.join(sorted(set(pool_names)))}: no free desktop names in 8 draws", delay=1)


def provision(ctx: Context, a: p.Provision) -> None:
    """Restore a fresh desktop from its pool's template if it has one, else boot it: overlay,
    then (for a fresh desktop) computer account + definition, then start.

    A desktop whose domain already exists is only started: redefining it would drop the join
    secret it has not read yet. A crash between the computer account and the definition makes the
    next pass reset the account (a new secret): nothing stale is ever handed to a guest."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state != S.PROVISIONING:
            return
        spec = spec_for(session, row, policies.active_in(session))
        age, host_id = ctx.clock.now() - row.state_since, row.host_id
    _bring_up(ctx, a, spec, age, host_id)


def _bring_up(ctx: Context, a: p.Provision, spec: DesktopSpec, age: timedelta, host_id: int) -> None:
    """`provision` once its row is read: SPEC on host HOST_ID, provisioning for AGE so far."""
    hv, own_host = ctx.driver(host_id), host_id == ctx.host_id
    try:
        spec = replace(spec, nic=network.nic_for(ctx, a.desktop_id))
    except AddressPoolExhausted as err:
        mark_failed(ctx, p.MarkFailed(a.desktop_id, str(err)))
        return
    if spec.nic is not None and ctx.network is not None and own_host:
        # its port is known before its NIC asks for an address (another host's agent admits it there)
        ctx.network.admit(spec.nic)
    needs_identity = ctx.directory is not None and ctx.directory.manages_computers
    if spec.template is not None and spec.image.readiness != Readiness.CHANNEL and needs_identity:
        spec = replace(spec, template=None)  # its join secret could only reach it at boot (fw_cfg)
    if a.fresh and spec.template is not None:
        how = _instant(ctx, hv, spec, age)
        if how != "cold":
            return
        spec = replace(spec, template=None)
    try:
        path = hv.create_overlay(spec)
        ctx.crashpoint("provision.after-overlay")
        if a.fresh:
            if ctx.directory is not None and ctx.directory.manages_computers:
                spec = replace(spec, join_secret=ctx.directory.set_computer(spec.name))
                ctx.crashpoint("provision.after-computer")
            hv.define(spec)
            ctx.crashpoint("provision.after-define")
        hv.start(spec.name)
        ctx.crashpoint("provision.after-start")
    except PermanentError as err:
        mark_failed(ctx, p.MarkFailed(a.desktop_id, str(err)))
        return
    with session_scope(ctx.engine) as session:
        desktops.note_disk(session=session, desktop_id=a.desktop_id, path=str(path))


def _instant(ctx: Context, hv: Hypervisor, spec: DesktopSpec, age: timedelta) -> str:
    """Try the instant path: "restored", "waiting" (its template is on its way), or "cold" (boot
    it instead: no template came within `template_wait`, or the restore failed; a template whose
    restore failed is retired, and rebuilt once nothing is backed by it). A template that is
    booting is waited for as long as a boot may take: booting the desktop beside it would only
    slow both down on a busy host."""
    key = spec.template
    assert key is not None
    template = hv.template(key)
    if template is not None and template.running and not template.quarantined:
        return "waiting" if age < ctx.limits.boot_timeout else "cold"
    if template is not None and template.retired:
        return "cold"  # its memory could not be restored: boot until it is rebuilt
    if template is None or not template.saved:
        return "waiting" if age < ctx.limits.template_wait else "cold"
    if ctx.directory is not None and ctx.directory.manages_computers:
        spec = replace(spec, join_secret=ctx.directory.set_computer(spec.name))
    try:
        path = hv.restore_clone(spec)
    except PermanentError as err:
        log.warning("desktop %s: restore from template %s failed, booting it instead: %s", spec.name,
                    key.slug, err)
        with session_scope(ctx.engine) as session:
            audit.append(session=session, actor=ACTOR, action="desktop.restore_failed", target=spec.name,
                         template=key.slug, reason=str(err)[:500])
        hv.delete_overlay(spec.name)  # its overlay is backed by the template: start afresh
        hv.retire_template(key)  # not removed: the clones made from it are backed by its disk
        return "cold"
    ctx.crashpoint("provision.after-restore")
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=spec.desktop_id)
        if row is not None:
            row.disk_path = str(path)
            row.state_since = ctx.clock.now()  # its identity and boot timeouts count from the restore
            session.add(row)
        audit.append(session=session, actor=ACTOR, action="desktop.restore", target=spec.name,
                     template=key.slug)
    return "restored"


def mark_ready(ctx: Context, a: p.MarkReady) -> None:
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state != S.PROVISIONING:
            return
        now = ctx.clock.now()
        boot_s = round((now - row.state_since).total_seconds(), 3)
        desktops.set_state(session=session, desktop=row, state=S.READY, now=now)
        audit.append(session=session, actor=ACTOR, action="desktop.ready", target=row.name, boot_s=boot_s)
        rollouts.note(session, row, Signal.READY, boot_s)
        name, host_id = row.name, row.host_id
    telemetry.PROVISIONING.observe(boot_s)
    ctx.driver(host_id).discard_join_secret(name)  # the guest has it (read before it signalled ready)


def mark_failed(ctx: Context, a: p.MarkFailed) -> None:
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state != S.PROVISIONING:
            return
        desktops.set_state(session=session, desktop=row, state=S.FAILED, now=ctx.clock.now(), reason=a.reason)
        audit.append(session=session, actor=ACTOR, action="desktop.failed", target=row.name, reason=a.reason)
        rollouts.note(session, row, Signal.FAILED)
        name, host_id = row.name, row.host_id
    log.warning("desktop %s failed: %s", name, a.reason)
    ctx.driver(host_id).destroy(name)  # keep the overlay for inspection; deleting the desktop removes it


def start_domain(ctx: Context, a: p.StartDomain) -> None:
    """Power a desktop in a session back on (an idle one goes through provisioning instead)."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state not in (S.IN_USE, S.DRAINING):
            return
        audit.append(session=session, actor=ACTOR, action="desktop.restart", target=row.name,
                     reason="domain was not running")
        rollouts.note(session, row, Signal.RESTART)
        name, host_id = row.name, row.host_id
    ctx.driver(host_id).start(name)


# --- what a failed step leaves on its desktop (the reconciler calls these) ------------------------


def retry_later(ctx: Context, desktop_id: int, delay: float, reason: str) -> None:
    """A step asked to be retried in DELAY seconds: back off, doubling with each failure in a row."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is None:
            return
        wait = p.backoff(delay, row.failures + 1, ctx.limits)
        desktops.note_failure(session=session, desktop=row, retry_at=ctx.clock.now() + wait)
        name, failures = row.name, row.failures
    log.info("desktop %s: failure %d in a row, next try in %.0f s: %s", name, failures, wait.total_seconds(),
             reason)


def record_permanent(ctx: Context, desktop_id: int, step: str, reason: str) -> None:
    """A step failed for good. A provisioning desktop fails (with the reason); any other keeps its
    state (its lifecycle has no edge to failed), carries the reason, is audited once, and is looked
    at again only after the longest back-off, in case someone repaired what was wrong."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is None:
            return
        provisioning = row.state == S.PROVISIONING
        if not provisioning:
            if row.reason != reason:
                audit.append(session=session, actor=ACTOR, action="desktop.step_failed", target=row.name,
                             step=step, state=str(row.state), reason=reason)
            row.reason = reason
            desktops.note_failure(session=session, desktop=row, retry_at=ctx.clock.now() + ctx.limits.max_retry_delay)
        name = row.name
    if provisioning:
        mark_failed(ctx, p.MarkFailed(desktop_id, reason))
    else:
        log.error("desktop %s: %s failed for good (looked at again in %s): %s", name, step,
                  ctx.limits.max_retry_delay, reason)


def succeeded(ctx: Context, desktop_id: int) -> None:
    with session_scope(ctx.engine) as session:
        desktops.clear_failures(session=session, desktop_id=desktop_id)


def _transition(ctx: Context, desktop_id: int, state: DesktopState, action: str, signal: Signal | None = None,
                **detail: Any) -> None:
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is None or row.state == state:
            return
        desktops.set_state(session=session, desktop=row, state=state, now=ctx.clock.now(),
                           reason=detail.get("reason"))
        audit.append(session=session, actor=ACTOR, action=action, target=row.name, **detail)
        if signal is not None:
            rollouts.note(session, row, signal)


def repair(ctx: Context, a: p.Repair) -> None:
    _transition(ctx, a.desktop_id, S.PROVISIONING, "desktop.repair", Signal.RESTART, reason=a.reason)


def recycle(ctx: Context, a: p.Recycle) -> None:
    """The agent's desktop is gone: free the assignment and delete the rest (audited, once)."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state not in (S.IN_USE, S.DRAINING):
            return
        user, name = row.assigned_to, row.name
        desktops.unassign(session=session, desktop=row)
        desktops.set_state(session=session, desktop=row, state=S.DELETING, now=ctx.clock.now(), reason=a.reason)
        audit.append(session=session, actor=ACTOR, action="desktop.recycle", target=row.name, user=user,
                     reason=a.reason)
        rollouts.note(session, row, Signal.RESTART)
    log.warning("desktop %s of %s recycled: %s", name, user, a.reason)


def evacuate(ctx: Context, a: p.Evacuate) -> None:
    """Give up a desktop of a fenced host (audited with its agent); the pool replaces it elsewhere,
    and its agent, told why, gets the fresh one on reconnect."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state == S.DELETING:
            return
        user = row.assigned_to
        if user is not None:
            desktops.unassign(session=session, desktop=row)
        desktops.set_state(session=session, desktop=row, state=S.DELETING, now=ctx.clock.now(), reason=a.reason)
        audit.append(session=session, actor=ACTOR, action="desktop.evacuate", target=row.name, user=user,
                     host=row.host_id, reason=a.reason)
        rollouts.note(session, row, Signal.RESTART)


def drain(ctx: Context, a: p.Drain) -> None:
    _transition(ctx, a.desktop_id, S.DRAINING, "desktop.drain")


def delete_many(ctx: Context, actions: Sequence[p.Delete]) -> Batch:
    """Mark for teardown, in one transaction. The plan was made from a snapshot: an agent's desktop
    whose hold was renewed since (a reconnect, a live session's heartbeat) is left alone (refused,
    to be looked at again), decided in this transaction."""
    refused: list[tuple[Any, Exception]] = []
    with session_scope(ctx.engine) as session:
        rows = desktops.get_many(session=session, ids=[a.desktop_id for a in actions])
        now = ctx.clock.now()
        marked = []
        for a in actions:
            row = rows.get(a.desktop_id)
            if row is None or row.state == S.DELETING:
                continue
            if row.state in (S.IN_USE, S.DRAINING) and (row.grace_until is None or row.grace_until >= now):
                refused.append((a, TemporaryError(f"delete {row.name}: its agent is back or still connected",
                                                  delay=5)))
                continue
            marked.append(row)
        desktops.set_states(session=session, desktops=marked, state=S.DELETING, now=now)
        audit.append_all(session=session, events=[audit.event(actor=ACTOR, action="desktop.delete", target=row.name)
                                                  for row in marked])
    return Batch(refused=refused)


def _remove_traces(ctx: Context, name: str, host_id: int | None, *, computer: bool = True) -> None:
    """Domain and overlay on HOST_ID (None: no host has any), then (COMPUTER) the AD account."""
    if host_id is not None:
        hv = ctx.driver(host_id)
        hv.undefine(name)
        ctx.crashpoint("teardown.after-undefine")
        hv.delete_overlay(name)
        ctx.crashpoint("teardown.after-overlay")
    if computer and ctx.directory is not None and ctx.directory.manages_computers:
        ctx.directory.delete_computer(name)
        ctx.crashpoint("teardown.after-computer")


def recreate(ctx: Context, a: p.Recreate) -> None:
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state != S.PROVISIONING:
            return
        name, host_id = row.name, row.host_id
    _remove_traces(ctx, name, host_id)


def teardown(ctx: Context, a: p.Teardown) -> None:
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is None or row.state != S.DELETING:
            return
        name, host_id = row.name, row.host_id
        if a.host_gone and display_sessions.count_fresh(session=session, desktop_id=a.desktop_id,
                                                        since=ctx.clock.now() - TELL_AGENT):
            # its agent's gateway session learns why from this row (sessions.heartbeat) and ends
            raise TemporaryError(f"teardown {name}: its agent is being told that its host failed", delay=2)
    _remove_traces(ctx, name, None if a.host_gone else host_id)
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=a.desktop_id)
        if row is not None:
            tickets.delete_for_desktop(session=session, desktop_id=a.desktop_id)
            desktops.delete(session=session, desktop=row)
            audit.append(session=session, actor=ACTOR, action="desktop.removed", target=name)


def adopt(ctx: Context, a: p.Adopt) -> None:
    with session_scope(ctx.engine) as session:
        pool = session.get(Pool, a.pool_id)
        if pool is None or desktops.get_by_name(session=session, name=a.name) is not None:
            return
        now = ctx.clock.now()
        desktops.create(session=session, desktop=Desktop(
            name=a.name, pool_id=a.pool_id, host_id=a.host_id, image_id=pool.image_id, created_at=now,
            state_since=now))
        audit.append(session=session, actor=ACTOR, action="desktop.adopt", target=a.name, pool=pool.name,
                     host=a.host_id)


def remove_orphan(ctx: Context, a: p.RemoveOrphan) -> None:
    """Remove what no desktop row of its host explains. A copy of a desktop that lives on
    another host loses its domain and overlay there, never the desktop's computer account."""
    with session_scope(ctx.engine) as session:
        row = desktops.get_by_name(session=session, name=a.name)
        if row is not None and (a.host_id is None or row.host_id == a.host_id):
            return  # it has a row after all (created since the plan): not an orphan
    _remove_traces(ctx, a.name, a.host_id, computer=row is None)
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=ACTOR, action="orphan.remove", target=a.name, host=a.host_id)


def drop_pool(ctx: Context, a: p.DropPool) -> None:
    with session_scope(ctx.engine) as session:
        pool = session.get(Pool, a.pool_id)
        if pool is None or not pool.deleting or desktops.list_all(session=session, pool_id=a.pool_id):
            return
        pools.delete(session=session, pool=pool)
        audit.append(session=session, actor=ACTOR, action="pool.removed", target=pool.name)


STEPS: dict[type, Callable[[Context, Any], None]] = {
    BringUp: bring_up,
    p.Provision: provision,
    p.MarkReady: mark_ready,
    p.MarkFailed: mark_failed,
    p.StartDomain: start_domain,
    p.Repair: repair,
    p.Recycle: recycle,
    p.Recreate: recreate,
    p.Drain: drain,
    p.Teardown: teardown,
    p.Evacuate: evacuate,
    p.Adopt: adopt,
    p.RemoveOrphan: remove_orphan,
    p.DropPool: drop_pool,
}

# Steps that write rows only, done for all of a pass's actions of their kind in one transaction:
# at 500 changes a pass, a transaction per step cost more than the rest of the pass.
BATCHES: dict[type, Callable[[Context, Sequence[Any]], Batch]] = {
    p.CreateDesktop: create_desktops,
    p.Delete: delete_many,
}
