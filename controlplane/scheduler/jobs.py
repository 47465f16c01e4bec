"""APScheduler wakes the scaling evaluation at the moments the rosters imply.

- Jobs live in a persistent SQLAlchemy job store in the project's own database, so planned wake-ups
  survive a restart.
- Every job only calls `services.scaling.evaluate`, which recomputes desired sizes from the rosters
  at that moment. A missed, late or doubled trigger therefore cannot leave a pool wrong.
- `coalesce=True`: after downtime, several missed runs of a job run once (running them all would
  compute the same answer several times).
- `misfire_grace_time=3600`: a wake-up up to an hour late still runs at once on restart (a pool must
  be right "within one reconcile period after restart"); the minute tick covers anything older.
- `max_instances=1`: an evaluation never overlaps itself.
- One scheduler per database: APScheduler 3 cannot share a job store between processes, so only the
  holder of the `scheduler` lease (in the database) runs it; the others stand by and take over when
  the lease expires.
The job functions are module-level (the store keeps them by reference); the running process's
context is registered here once at start, because a Context cannot be pickled into the store.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from controlplane.services import scaling
from controlplane.services.context import Context

log = logging.getLogger(__name__)
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}
_RUNTIME: dict[str, object] = {}  # the one ShiftScheduler of this process (see module docstring)


def tick() -> None:
    """Scheduled entry point: evaluate rosters, re-plan wake-ups, wake the reconciler."""
    runner = _RUNTIME.get("scheduler")
    if isinstance(runner, ShiftScheduler):
        runner.evaluate()


class ShiftScheduler:
    def __init__(self, ctx: Context, *, period_s: float = 60.0, lease_ttl: timedelta = timedelta(seconds=90),
                 on_change: Callable[[], None] | None = None, horizon: timedelta = timedelta(hours=24)) -> None:
        self.ctx = ctx
        self.period_s = period_s
        self.lease_ttl = lease_ttl
        self.on_change = on_change
        self.horizon = horizon
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the lease loop: only the holder runs APScheduler --------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._lease_loop, name="shift-scheduler", daemon=True)
        self._thread.start()

    def _lease_loop(self) -> None:
        while not self._stop.is_set():
            try:
                held = scaling.hold_lease(self.ctx, self.holder, self.lease_ttl) is not None
            except Exception:
                log.exception("scheduler lease check failed")
                held = False
            if held and self.scheduler is None:
                self._start_scheduler()
            elif not held and self.scheduler is not None:
                log.warning("scheduler lease lost; standing by")
                self._stop_scheduler()
            self._stop.wait(min(self.period_s, self.lease_ttl.total_seconds() / 3))

    def _start_scheduler(self) -> None:
        _RUNTIME["scheduler"] = self
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.ctx.engine, tablename="apscheduler_jobs")},
            job_defaults=JOB_DEFAULTS, timezone="UTC")
        self.scheduler.start()
        self.scheduler.add_job(tick, "interval", seconds=self.period_s, id="scaling-tick", replace_existing=True,
                               next_run_time=datetime.now(UTC))  # right away (APScheduler runs on wall time)
        log.info("shift scheduler active (%s)", self.holder)

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_scheduler()
        scaling.release_lease(self.ctx, self.holder)
        if _RUNTIME.get("scheduler") is self:
            _RUNTIME.pop("scheduler")

    @property
    def active(self) -> bool:
        return self.scheduler is not None

    # --- what a wake-up does -------------------------------------------------------------------

    def evaluate(self) -> dict[str, tuple[int, int]]:
        """One wake-up. A pool whose roster fails to evaluate is reported and skipped inside
        scaling.evaluate and scaling.next_wakes, so it never costs the other pools their wake-up."""
        epoch = scaling.hold_lease(self.ctx, self.holder, self.lease_ttl)
        if epoch is None:
            return {}  # lost the lease between wake-ups: the new holder evaluates
        with scaling.as_scheduler(epoch):  # a successor's epoch refuses this one's late writes
            changes = scaling.evaluate(self.ctx)
        self.plan_wakes()
        if changes and self.on_change is not None:
            self.on_change()
        return changes

    def plan_wakes(self) -> None:
        """One date job per upcoming roster edge (minus lead time), replaced idempotently."""
        if self.scheduler is None:
            return
        for pool, at in scaling.next_wakes(self.ctx, self.ctx.clock.now(), self.horizon):
            self.scheduler.add_job(tick, "date", run_date=at, id=f"wake-{pool}-{int(at.timestamp())}",
                                   replace_existing=True)
