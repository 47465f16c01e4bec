"""The reconciler: observe, plan (pure), act in small idempotent steps, come back.

Level-triggered: each pass starts from a fresh look at the database and at libvirt, never from
memory of the last pass. Steps of one pass run in parallel with a bound; a pass never waits for
a guest to boot (booting desktops are simply looked at again next pass). One reconciler per
database holds a lease, so a second `shiftdesk serve` (or a CLI `--wait`) stands by; the lease is
renewed before each step of a pass (a pass can outlast its TTL), and a reconciler that finds it
lost stops acting at once.

A failed step says what to do next (`controlplane.errors`): a TemporaryError backs its desktop
off (its delay, doubled per failure in a row, kept on the row so a successor honours it too); a
PermanentError is recorded on the desktop and audited once; nothing is retried at the pass rate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any

from controlplane.db import leases
from controlplane.db.engine import fenced, session_scope
from controlplane.domain.planning import Action, Plan, backoff, plan
from controlplane.domain.templates import TemplateAction
from controlplane.errors import PermanentError, TemporaryError
from controlplane.heap import collector_paused
from controlplane.services import apps, hosts, network, observation, provisioning, rollouts, telemetry, templates
from controlplane.services import pools as pools_service
from controlplane.services.context import Context
from controlplane.services.observation import Observation

log = logging.getLogger(__name__)
LEASE = "reconciler"
STEPS = {**provisioning.STEPS, **templates.STEPS}
BATCHES = provisioning.BATCHES  # kinds of action a pass does for all its actions at once (not in STEPS)
Step = Action | TemplateAction | provisioning.BringUp


class Reconciler:
    def __init__(self, ctx: Context, *, lease_ttl: timedelta = timedelta(seconds=15)) -> None:
        self.ctx = ctx
        self.lease_ttl = lease_ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.wake = threading.Event()
        # a guest that says ready (or is quarantined) is acted on now, not at the next pass
        ctx.hypervisor.watch(self.wake.set)
        if ctx.fleet is not None:
            ctx.fleet.watch(self.wake.set)
        self._pool = ThreadPoolExecutor(max_workers=ctx.parallelism, thread_name_prefix="reconcile")
        self._lease_lock = threading.Lock()
        self._renewed_at: datetime | None = None  # when this reconciler last took or renewed the lease
        self.epoch: int | None = None  # the lease's epoch when this reconciler took it (its fencing token)
        self._lost = False
        # steps of no desktop (orphans, templates) backing off
        self._held: dict[Step, tuple[int, datetime]] = {}

    # --- one pass -----------------------------------------------------------------------------

    def observe(self) -> Observation:
        """The database and a fresh look at every host, in parallel. TemporaryError when no host
        answers (nothing can be done then; one host down leaves the others' work going)."""
        seen = observation.observe(self.ctx, self._pool.map)
        if seen.hosts and not seen.answering:
            down = "; ".join(f"{h.ref.name}: {h.view.down_reason}" for h in seen.hosts)
            raise TemporaryError(f"no host answers: {down}", delay=5)
        return seen

    def observe_and_plan(self) -> Plan:
        """The plan for the world as it is now (what a standby shows, and what a pass acts on)."""
        return self._plan(self.observe())

    def _plan(self, seen: Observation) -> Plan:
        directory = self.ctx.directory
        computers = directory.list_computers() if directory is not None and directory.manages_computers else None
        return plan(seen.pools, seen.desktops, seen.host_views, self.ctx.clock.now(), self.ctx.limits, computers)

    @telemetry.RECONCILE_PASS.time()
    def pass_once(self) -> Plan:
        """Observe, plan and perform every step (templates first: clones wait for them). Returns
        the plan it carried out."""
        self._lost = False
        rolling = 0
        kept = self._lease_kept()
        with self._fenced(), collector_paused():
            if kept:
                network.sync(self.ctx)  # before any desktop step: each finds its port admitted
                rolling = self._advance_rollouts()
            return self._plan_and_act(rolling, deliver=kept)

    def _plan_and_act(self, rolling: int, *, deliver: bool) -> Plan:
        """Template steps first (clones wait for them), then the desktops' steps, both planned
        from one look at the world; a pass whose template steps changed a host looks again. With
        DELIVER, app allowlists go out from that look before any step."""
        seen = self.observe()
        template_steps = templates.plan(self.ctx, seen.hosts, seen.wanted_templates, seen.images_in_use)
        now = self.ctx.clock.now()
        due_templates = [s for s in template_steps if s not in self._held or self._held[s][1] <= now]
        for step in due_templates:
            self._perform(step)
        if due_templates:
            seen = self.observe()
        if deliver:
            self._deliver_apps(seen)
        current = self._plan(seen)
        self._record(hosts.note_fencing, seen.hosts)
        self._record(pools_service.note_unplaceable, current.unplaceable)
        current.template_steps = len(template_steps)
        current.rollouts = rolling
        now = self.ctx.clock.now()
        due = [a for a in current.actions if a not in self._held or self._held[a][1] <= now]
        self._act(due, frozenset(d.id for d in seen.desktops if d.retry_at is not None))
        return current

    def _act(self, due: list[Action], backing_off: Collection[int] | None = None) -> None:
        """Carry out DUE: each kind in BATCHES in one transaction, then every step on its own, in
        parallel. BACKING_OFF: see `_perform`."""
        steps: list[Step] = [a for a in due if type(a) not in BATCHES]
        for kind, batch in BATCHES.items():
            steps += self._perform_batch(batch, [a for a in due if type(a) is kind], backing_off)
        futures = [self._pool.submit(self._perform, step, backing_off) for step in steps]
        for future in futures:
            future.result()

    def _advance_rollouts(self) -> int:
        """Image rollouts take their next step (rebuilds marked here are carried out this pass)."""
        try:
            return rollouts.advance(self.ctx)
        except Exception:
            log.exception("rollouts not advanced this pass")
            return 0

    def _deliver_apps(self, seen: Observation) -> None:
        """App allowlists to the guests SEEN running (a desktop is ready once it runs nothing
        beyond its list: the next pass sees that)."""
        try:
            apps.sync(self.ctx, seen.occupancy)
        except Exception:  # provisioning goes on; a desktop is not ready until its list is offered
            log.exception("app allowlists not delivered this pass")

    def _fenced(self) -> AbstractContextManager[None]:
        """Every write of this reconciler's pass and steps commits only while the lease is still
        at the epoch it took it at (a successor raises the epoch: see db/leases.py)."""
        return fenced(LEASE, self.epoch) if self.epoch is not None else nullcontext()

    def _perform(self, action: Step, backing_off: Collection[int] | None = None) -> None:
        """Carry out ACTION. BACKING_OFF: the desktops whose last step had failed when the pass
        looked (only their success has a back-off to clear; None: any may have one)."""
        if not self._lease_kept():
            return  # another reconciler acts now: doing anything more could undo its work
        log.debug("step %s", action)
        with self._fenced():
            try:
                STEPS[type(action)](self.ctx, action)
            except Exception as err:
                self._failed(action, err)
            else:
                self._succeeded(action, backing_off)

    def _perform_batch(self, batch: Callable[[Context, Sequence[Any]], provisioning.Batch], actions: list[Any],
                       backing_off: Collection[int] | None) -> list[provisioning.BringUp]:
        """ACTIONS of one kind in one transaction (BATCH); returns the steps each leaves to do."""
        if not actions or not self._lease_kept():
            return []
        with self._fenced():
            try:
                done = batch(self.ctx, actions)
            except Exception as err:
                for action in dict.fromkeys(actions):  # equal actions (two desktops of a pool) fail once
                    self._failed(action, err)
                return []
            refused = {id(action) for action, _ in done.refused}
            for action, why in done.refused:
                self._failed(action, why)
            for action in actions:
                if id(action) not in refused:
                    self._succeeded(action, backing_off)
        return done.follow_up

    def _succeeded(self, action: Step, backing_off: Collection[int] | None) -> None:
        desktop_id: int | None = getattr(action, "desktop_id", None)
        if desktop_id is None:
            self._held.pop(action, None)
        elif backing_off is None or desktop_id in backing_off:
            self._record(provisioning.succeeded, desktop_id)

    def _failed(self, action: Step, err: Exception) -> None:
        """A TemporaryError backs off, a PermanentError is recorded, anything else is a crash."""
        desktop_id: int | None = getattr(action, "desktop_id", None)
        if isinstance(err, TemporaryError):
            self._retry_later(action, desktop_id, err.delay, str(err))
        elif isinstance(err, PermanentError) and desktop_id is None:
            log.error("step %s failed: %s", action, err)
            self._retry_later(action, None, self.ctx.limits.max_retry_delay.total_seconds(), str(err))
        elif isinstance(err, PermanentError):
            self._record(provisioning.record_permanent, desktop_id, type(action).__name__, str(err))
        else:
            log.error("step %s crashed; backing off", action, exc_info=err)
            self._retry_later(action, desktop_id, self.ctx.limits.min_retry_delay.total_seconds(), repr(err))

    def _retry_later(self, action: Step, desktop_id: int | None, delay: float, reason: str) -> None:
        if desktop_id is not None:
            self._record(provisioning.retry_later, desktop_id, delay, reason)
            return
        failures = self._held.get(action, (0, self.ctx.clock.now()))[0] + 1
        wait = backoff(delay, failures, self.ctx.limits)
        self._held[action] = (failures, self.ctx.clock.now() + wait)
        log.info("step %s: failure %d in a row, next try in %.0f s: %s", action, failures, wait.total_seconds(),
                 reason)

    def _record(self, what: Callable[..., None], *args: object) -> None:
        try:
            what(self.ctx, *args)
        except Exception:  # the database is away: the next pass looks at the world again
            log.exception("could not record the outcome of a step")

    def _lease_kept(self) -> bool:
        """Renew the lease unless it was renewed less than a third of its TTL ago; False once lost."""
        with self._lease_lock:
            if self._lost:
                return False
            now = self.ctx.clock.now()
            if self._renewed_at is not None and now - self._renewed_at < self.lease_ttl / 3:
                return True
            try:
                kept = self.hold_lease()
            except Exception:
                log.exception("could not renew the reconciler lease")
                kept = False
            if not kept:
                log.warning("reconciler lease lost during a pass: stopping until it is ours again")
                self._lost = True
            return kept

    # --- the loop -----------------------------------------------------------------------------

    def hold_lease(self) -> bool:
        """Take or renew the lease; take it over at once from a dead process on this host."""
        now = self.ctx.clock.now()
        with session_scope(self.ctx.engine) as session:
            epoch = leases.acquire(session=session, name=LEASE, holder=self.holder, now=now, ttl=self.lease_ttl)
            if epoch is None:
                other = leases.holder_of(session=session, name=LEASE)
                if other is not None and _dead_local_holder(other):
                    log.warning("reconciler lease of %s: that process is gone, taking over", other)
                    epoch = leases.take_over(session=session, name=LEASE, stale_holder=other, holder=self.holder,
                                             now=now, ttl=self.lease_ttl)
        self.epoch = epoch
        self._renewed_at = now if epoch is not None else None
        return epoch is not None

    def release_lease(self) -> None:
        self._renewed_at = None
        with session_scope(self.ctx.engine) as session:
            leases.release(session=session, name=LEASE, holder=self.holder)

    def run(self, stop: threading.Event, *, period: float = 2.0, busy_period: float = 0.25) -> None:
        """Reconcile until STOP is set. Stands by while another process holds the lease."""
        try:
            while not stop.is_set():
                delay = period
                try:
                    if self.hold_lease():
                        delay = self._next_delay(self.pass_once(), period, busy_period)
                except Exception:
                    log.exception("reconcile pass failed; retrying")
                self.wake.wait(delay)
                self.wake.clear()
        finally:
            self.release_lease()

    def run_until_converged(self, *, timeout: float, busy_period: float = 0.25,
                            on_pass: Callable[[Plan], None] | None = None,
                            until: Callable[[], bool] | None = None) -> bool:
        """Passes until nothing is left to do and UNTIL (if given) holds (True), or TIMEOUT passes
        (False). UNTIL waits for what takes passes without steps, such as a rollout's soak."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.hold_lease():
                    time.sleep(busy_period)  # another reconciler works; we only watch
                    current = self.observe_and_plan()
                else:
                    current = self.pass_once()
            except TemporaryError as err:  # libvirt or the directory is away: look again shortly
                log.warning("reconcile pass postponed: %s", err)
                time.sleep(max(busy_period, min(err.delay, 5.0)))
                continue
            if on_pass:
                on_pass(current)
            if not current.pending and (until is None or until()):
                return True
            self.wake.wait(min(self._next_delay(current, 5.0, busy_period), max(0.0, deadline - time.monotonic())))
            self.wake.clear()
        return False

    def _next_delay(self, current: Plan, period: float, busy_period: float) -> float:
        """Come back soon while things move; when only back-offs are pending, when the first is due."""
        if not current.pending:
            return period
        if current.actions or current.booting or current.template_steps or current.retry_at is None:
            return busy_period
        due = (current.retry_at - self.ctx.clock.now()).total_seconds()
        return min(max(due, busy_period), max(period, busy_period))

    def close(self) -> None:
        """Stop the workers and hand the lease back, so a successor need not wait for the TTL."""
        self._pool.shutdown(wait=True)
        self.release_lease()


def _dead_local_holder(holder: str) -> bool:
    """A holder is `host:pid:object`; on this host a missing pid means a crashed process."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host: only the TTL can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
