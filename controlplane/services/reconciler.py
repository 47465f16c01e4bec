"""The reconciler: observe, plan (pure), act in small idempotent steps, come back.

Level-triggered: each pass starts from a fresh look at the database and at libvirt, never from
memory of the last pass. Steps of one pass run in parallel with a bound; a pass never waits for
a guest to boot (booting desktops are simply looked at again next pass). One reconciler per
database holds a lease, so a second `shiftdesk serve` (or a CLI `--wait`) stands by.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from controlplane.db import desktops, leases, pools
from controlplane.db.engine import session_scope
from controlplane.domain.planning import DesktopView, Plan, PoolView, plan
from controlplane.errors import PermanentError, TemporaryError
from controlplane.services.context import Context
from controlplane.services.provisioning import STEPS

log = logging.getLogger(__name__)
LEASE = "reconciler"


class Reconciler:
    def __init__(self, ctx: Context, *, lease_ttl: timedelta = timedelta(seconds=15)) -> None:
        self.ctx = ctx
        self.lease_ttl = lease_ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=ctx.parallelism, thread_name_prefix="reconcile")

    # --- one pass -----------------------------------------------------------------------------

    def observe_and_plan(self) -> Plan:
        with session_scope(self.ctx.engine) as session:
            pool_views = [PoolView(id=p.id or 0, name=p.name, target=p.target_size, min_size=p.min_size,
                                   max_size=p.max_size, deleting=p.deleting)
                          for p in pools.list_all(session=session)]
            desktop_views = [DesktopView(id=d.id or 0, name=d.name, pool_id=d.pool_id, state=d.state,
                                         since=d.state_since, generation=d.generation,
                                         grace_until=d.grace_until)
                             for d in desktops.list_all(session=session)]
        hv, directory = self.ctx.hypervisor, self.ctx.directory
        computers = directory.list_computers() if directory is not None and directory.manages_computers else None
        return plan(pool_views, desktop_views, hv.list_desktops(), hv.list_overlays(),
                    self.ctx.clock.now(), self.ctx.limits, computers)

    def pass_once(self) -> Plan:
        """Observe, plan and perform every step. Returns the plan it carried out."""
        current = self.observe_and_plan()
        futures = [self._pool.submit(self._perform, action) for action in current.actions]
        for future in futures:
            future.result()
        return current

    def _perform(self, action: object) -> None:
        try:
            STEPS[type(action)](self.ctx, action)
        except TemporaryError as err:
            log.info("step %s will be retried: %s", action, err)
        except PermanentError as err:
            log.error("step %s failed: %s", action, err)
        except Exception:
            log.exception("step %s crashed; the next pass will look again", action)

    # --- the loop -----------------------------------------------------------------------------

    def hold_lease(self) -> bool:
        """Take or renew the lease; take it over at once from a dead process on this host."""
        now = self.ctx.clock.now()
        with session_scope(self.ctx.engine) as session:
            if leases.acquire(session=session, name=LEASE, holder=self.holder, now=now, ttl=self.lease_ttl):
                return True
            other = leases.holder_of(session=session, name=LEASE)
            if other is None or not _dead_local_holder(other):
                return False
            log.warning("reconciler lease of %s: that process is gone, taking over", other)
            return leases.take_over(session=session, name=LEASE, stale_holder=other, holder=self.holder,
                                    now=now, ttl=self.lease_ttl)

    def release_lease(self) -> None:
        with session_scope(self.ctx.engine) as session:
            leases.release(session=session, name=LEASE, holder=self.holder)

    def run(self, stop: threading.Event, *, period: float = 2.0, busy_period: float = 0.25) -> None:
        """Reconcile until STOP is set. Stands by while another process holds the lease."""
        try:
            while not stop.is_set():
                delay = period
                try:
                    if self.hold_lease():
                        delay = busy_period if self.pass_once().pending else period
                except Exception:
                    log.exception("reconcile pass failed; retrying")
                self.wake.wait(delay)
                self.wake.clear()
        finally:
            self.release_lease()

    def run_until_converged(self, *, timeout: float, busy_period: float = 0.25,
                            on_pass: Callable[[Plan], None] | None = None) -> bool:
        """Passes until nothing is left to do (True) or TIMEOUT passes (False)."""
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
            if not current.pending:
                return True
            time.sleep(busy_period)
        return False

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
