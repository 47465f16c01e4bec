"""Shift-driven scaling: rosters in, pool targets out.

`evaluate()` is what every scheduler wake-up does: for each pool with a roster, recompute the
desired size from (roster, now, live sessions, measured provisioning rate) and set the pool's
target. Nothing is remembered between wake-ups, so a missed, late or doubled wake-up cannot leave a
pool wrong. Ramp-down is the reconciler's usual shrink (idle desktops first, sessions drained,
never destroyed under a live session) plus a log-off time stamped on draining desktops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml
from pydantic import BaseModel

from controlplane.db import audit, desktops, leases, pools, rosters
from controlplane.db.engine import fenced, session_scope
from controlplane.db.models import RosterRecord
from controlplane.domain.desktop import DesktopState
from controlplane.domain.roster import ProvisioningRate, Roster, desired_size, headcount, lead_time, transitions
from controlplane.domain.roster_load import parse, to_roster
from controlplane.domain.safe_yaml import DocumentsInvalid
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.services import telemetry
from controlplane.services.context import Context

SCHEDULER_LEASE = "scheduler"
log = logging.getLogger(__name__)


class RosterFilesInvalid(InvalidInput):
    def __init__(self, err: DocumentsInvalid) -> None:
        first = err.errors[0]
        super().__init__(str(err), field=f"{first.file}:{first.line}:{first.field}")
        self.errors = err.errors


def _parse(files: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    try:
        return parse(files)
    except DocumentsInvalid as err:
        raise RosterFilesInvalid(err) from None


def validate(files: dict[str, str]) -> list[Roster]:
    return [to_roster(doc) for _, doc in _parse(files)]


def apply(ctx: Context, files: dict[str, str], *, actor: str) -> list[str]:
    """All files valid and every pool known, then all rosters replaced in one transaction."""
    docs = _parse(files)
    with session_scope(ctx.engine) as session:
        return [doc["pool"] for fname, doc in docs
                if _store(ctx, session, _pool_id(session, doc["pool"], fname), fname, doc, files[fname], actor=actor)]


def put(ctx: Context, pool: str, text: str, *, actor: str, create: bool = False) -> bool:
    """Set the roster of POOL from TEXT (its YAML); True when it changed. With CREATE, the pool
    must have none yet. For declarative clients (Terraform) that own one roster each."""
    fname = f"{pool}.yaml"
    ((_, doc),) = _parse({fname: text})
    if doc["pool"] != pool:
        raise InvalidInput(f"pool: the roster names {doc['pool']!r}, the request {pool!r}", field="pool")
    with session_scope(ctx.engine) as session:
        pool_id = _pool_id(session, pool, fname)
        if create and rosters.for_pool(session=session, pool_id=pool_id) is not None:
            raise Conflict(f"pool: {pool!r} already has a roster", field="pool")
        return _store(ctx, session, pool_id, fname, doc, text, actor=actor)


def remove(ctx: Context, pool: str, *, actor: str) -> None:
    """POOL stops following a roster; its size stays where the roster last put it."""
    with session_scope(ctx.engine) as session:
        p = pools.get_or_raise(session=session, name=pool)
        if not rosters.delete(session=session, pool_id=p.id or 0):
            raise NotFound(f"pool: {pool!r} has no roster", field="pool")
        audit.append(session=session, actor=actor, action="roster.remove", target=pool)


def _pool_id(session: Any, pool: str, fname: str) -> int:
    found = pools.get_by_name(session=session, name=pool)
    if found is None:
        raise InvalidInput(f"{fname}: pool: {pool!r} does not exist", field=f"{fname}:pool")
    return found.id or 0


def _store(ctx: Context, session: Any, pool_id: int, fname: str, doc: dict[str, Any], text: str, *,
           actor: str) -> bool:
    sha = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    existing = rosters.for_pool(session=session, pool_id=pool_id)
    if existing is not None and existing.sha256 == sha and existing.source == text:
        return False
    rosters.upsert(session=session, record=RosterRecord(pool_id=pool_id, document=doc, source=text, sha256=sha,
                                                         applied_at=ctx.clock.now(), actor=actor))
    audit.append(session=session, actor=actor, action="roster.apply", target=doc["pool"], sha256=sha, file=fname)
    return True


def roster_of(ctx: Context, pool: str) -> Roster:
    with session_scope(ctx.engine) as session:
        p = pools.get_or_raise(session=session, name=pool)
        record = rosters.for_pool(session=session, pool_id=p.id or 0)
        if record is None:
            raise NotFound(f"pool {pool!r} has no roster", field="pool")
        try:
            return to_roster(record.document)
        except Exception as err:
            raise Conflict(f"pool {pool!r}: its stored roster cannot be read ({type(err).__name__}: {err}); "
                           "apply a corrected roster", field="pool") from err


def show(ctx: Context, pool: str) -> dict[str, Any]:
    with session_scope(ctx.engine) as session:
        p = pools.get_or_raise(session=session, name=pool)
        record = rosters.for_pool(session=session, pool_id=p.id or 0)
        if record is None:
            raise NotFound(f"pool {pool!r} has no roster", field="pool")
        text = record.source if record.source is not None else yaml.safe_dump(record.document, sort_keys=False)
        return {"pool": pool, "applied_at": record.applied_at, "actor": record.actor, "roster": record.document,
                "yaml": text}


class RosterSummary(BaseModel):
    """A pool and its roster in brief (the console's rosters table); the roster fields are None and
    the counts 0 for a pool that has no roster. Counted from the stored document as it is, so a roster
    that no longer loads is still listed (its plot says why it fails)."""

    pool: str
    applied_at: datetime | None = None
    actor: str | None = None
    timezone: str | None = None
    shifts: int = 0
    events: int = 0
    holidays: int = 0


def list_rosters(ctx: Context) -> list[RosterSummary]:
    """Every pool, by name, with its roster's summary if it has one."""
    with session_scope(ctx.engine) as session:
        by_pool = {r.pool_id: r for r in rosters.list_all(session=session)}
        summaries = []
        for pool in pools.list_all(session=session):
            record = by_pool.get(pool.id or 0)
            if record is None:
                summaries.append(RosterSummary(pool=pool.name))
                continue
            doc = record.document
            summaries.append(RosterSummary(
                pool=pool.name, applied_at=record.applied_at, actor=record.actor, timezone=doc.get("timezone"),
                shifts=len(doc.get("shifts", [])), events=len(doc.get("events", [])),
                holidays=len(doc.get("holidays", []))))
        return summaries


def measured_rate(ctx: Context, parallelism: int | None = None) -> ProvisioningRate:
    """The configured rate, or: boot time from the last desktops' `desktop.ready` audit events and a
    rate of `parallelism` desktops per boot time."""
    if isinstance(ctx.provisioning_rate, ProvisioningRate):
        return ctx.provisioning_rate
    with session_scope(ctx.engine) as session:
        boots = [float(e.detail.get("boot_s", 0)) for e in audit.list_recent(session=session, limit=50,
                                                                              action="desktop.ready")]
    boot = statistics.median(boots) if boots else 10.0
    return ProvisioningRate(boot_s=boot, per_second=(parallelism or ctx.parallelism) / max(boot, 0.5))


@dataclass(frozen=True)
class PlanPoint:
    at: datetime
    headcount: int
    desired: int


def plan(ctx: Context, pool: str, start: datetime, hours: int = 24, step_minutes: int = 15) -> list[PlanPoint]:
    roster, rate = roster_of(ctx, pool), measured_rate(ctx)
    lead = lead_time(roster, rate, start)
    points, t = [], start
    while t < start + timedelta(hours=hours):
        points.append(PlanPoint(t, headcount(roster, t), desired_size(roster, t, 0, rate, lead)))
        t += timedelta(minutes=step_minutes)
    return points


def next_wakes(ctx: Context, now: datetime, horizon: timedelta) -> list[tuple[str, datetime]]:
    """When the scheduler should look again: every roster edge minus its lead time."""
    rate, wakes = measured_rate(ctx), []
    with session_scope(ctx.engine) as session:
        records = [(r, pools_name(session, r.pool_id)) for r in rosters.list_all(session=session)]
    for record, name in records:
        try:
            roster = to_roster(record.document)
            lead = lead_time(roster, rate, now)
        except Exception:  # evaluate() reports it; the other pools still get their wake-ups
            log.debug("no wake-ups for pool %s: its roster cannot be evaluated", name)
            continue
        for edge in transitions(roster, now, now + horizon + lead):
            if edge - lead > now:
                wakes.append((name, edge - lead))
    return sorted(wakes, key=lambda w: w[1])


def pools_name(session: Any, pool_id: int) -> str:
    pool = session.get(pools.Pool, pool_id)
    return pool.name if pool else "?"


ROSTER_FAILED = "roster.failed"


@dataclass(frozen=True)
class PoolPlan:
    """One pool's answer at one evaluation, computed from its roster before anything is written."""

    want: int  # the pool's target
    rostered: int  # what the roster alone wants: live sessions beyond it get a log-off time
    headcount: int
    logoff_at: datetime


def _plan_pool(document: dict[str, Any], live: int, now: datetime, rate: ProvisioningRate) -> PoolPlan:
    roster = to_roster(document)
    lead = lead_time(roster, rate, now)
    return PoolPlan(want=desired_size(roster, now, live, rate, lead),
                    rostered=desired_size(roster, now, 0, rate, lead),
                    headcount=headcount(roster, now), logoff_at=now + roster.logoff_grace)


def evaluate(ctx: Context) -> dict[str, tuple[int, int]]:
    """Set every rostered pool's target from its roster now. Returns {pool: (before, after)} changes.
    A roster that fails to evaluate (stored by an older version, its zone gone from tzdata) leaves
    its pool as it is, is reported once, and never stops the other pools."""
    now, rate, changes = ctx.clock.now(), measured_rate(ctx), {}
    with session_scope(ctx.engine) as session:
        for record in rosters.list_all(session=session):
            pool = session.get(pools.Pool, record.pool_id)
            if pool is None or pool.deleting:
                continue
            rows = desktops.list_all(session=session, pool_id=pool.id)
            in_use = sorted((d for d in rows if d.state == DesktopState.IN_USE), key=lambda d: d.state_since)
            try:
                plan = _plan_pool(record.document, len(in_use), now, rate)
            except Exception as err:  # a bulkhead: whatever one roster raises is that pool's alone
                _report_failure(session, pool.name, record, err)
                continue
            _schedule_logoffs(session, rows, in_use, plan.rostered, plan.logoff_at)
            if plan.want != pool.target_size or not pool.min_size <= plan.want <= pool.max_size:
                before = pool.target_size
                pool.target_size = plan.want
                pool.min_size, pool.max_size = min(pool.min_size, plan.want), max(pool.max_size, plan.want)
                session.add(pool)
                audit.append(session=session, actor="scheduler", action="pool.autoscale", target=pool.name,
                             before=before, after=plan.want, live=len(in_use), headcount=plan.headcount)
                changes[pool.name] = (before, plan.want)
                telemetry.SCALING.labels("grow" if plan.want > before else "shrink").inc()
    return changes


def _report_failure(session: Any, pool: str, record: RosterRecord, err: Exception) -> None:
    """Log and audit a roster's failure once per applied roster, not at every wake-up (each minute)."""
    applied = {"sha256": record.sha256, "applied_at": record.applied_at.isoformat()}
    last = audit.list_recent(session=session, limit=1, action=ROSTER_FAILED, target=pool)
    if last and all(last[0].detail.get(k) == v for k, v in applied.items()):
        return
    log.error("pool %s keeps its size: its roster cannot be evaluated (%s: %s); apply a corrected roster",
              pool, type(err).__name__, err, exc_info=err)
    audit.append(session=session, actor="scheduler", action=ROSTER_FAILED, target=pool,
                 error=f"{type(err).__name__}: {err}"[:500], **applied)


def _schedule_logoffs(session: Any, rows: list[Any], in_use: list[Any], rostered: int, at: datetime) -> None:
    """Ramp-down: sessions beyond what the roster still wants get a log-off time (oldest first);
    the gateway warns and ends them then, and only then is the desktop recycled. Sessions on
    drained desktops are logged off the same way. More people rostered again cancels it."""
    excess = max(0, len(in_use) - rostered)
    for i, d in enumerate(in_use):
        wanted = at if i < excess else None
        if (d.logoff_at is None) != (wanted is None):
            d.logoff_at = wanted
            session.add(d)
    for d in rows:
        if d.state == DesktopState.DRAINING and d.logoff_at is None:
            d.logoff_at = at
            session.add(d)


def hold_lease(ctx: Context, holder: str, ttl: timedelta) -> int | None:
    """Take or renew the scheduler lease: the epoch at which HOLDER holds it (at least 1), or None."""
    with session_scope(ctx.engine) as session:
        return leases.acquire(session=session, name=SCHEDULER_LEASE, holder=holder, now=ctx.clock.now(), ttl=ttl)


def as_scheduler(epoch: int) -> AbstractContextManager[None]:
    """Writes in this context commit only while the scheduler lease is still at EPOCH."""
    return fenced(SCHEDULER_LEASE, epoch)


def release_lease(ctx: Context, holder: str) -> None:
    with session_scope(ctx.engine) as session:
        leases.release(session=session, name=SCHEDULER_LEASE, holder=holder)
