"""Image rollouts (domain/rollout.py decides): start, advance on every reconcile pass, roll back,
and the signals the rest of the control plane reports while one runs.

`advance` runs in the reconciler, under its lease, so one process moves each rollout. Each of
its writes is one transaction that re-reads what it changes: a desktop is rebuilt only if it is
still ready and unassigned under its row lock (a sign-in between the plan and the write wins),
and a crash between two steps leaves a state the next pass continues from.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session

from controlplane.db import audit, images, pools
from controlplane.db import desktops as desktop_repo
from controlplane.db import rollouts as repo
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool, Rollout, RolloutSignal
from controlplane.domain.desktop import DesktopState
from controlplane.domain.planning import bounded_size
from controlplane.domain.rollout import (
    EARLY_DROP_S,
    LIVE,
    Decision,
    RolloutState,
    RolloutView,
    Signal,
    Slot,
    Thresholds,
    Version,
    VersionStats,
    canary_size,
    decide,
    rollback,
    stats_of,
)
from controlplane.errors import Conflict, InvalidInput
from controlplane.services.context import Context

log = logging.getLogger(__name__)
S = DesktopState
ACTOR = "rollout"


class RolloutPublic(BaseModel):
    id: int
    pool: str
    state: RolloutState
    from_image: str
    to_image: str
    canary: str
    batch: int
    soak_s: float
    thresholds: dict[str, float]
    reason: str
    actor: str
    desktops: dict[str, int]  # live desktops by version: old, new
    stats: dict[str, dict[str, Any]]


def start(ctx: Context, pool_name: str, *, image: str, canary: str = "1", batch: int = 1, soak_s: float = 300.0,
          thresholds: Thresholds | None = None, actor: str) -> RolloutPublic:
    """Begin moving POOL to IMAGE: the canary first, then batches of BATCH idle desktops."""
    if not 1 <= batch <= 100:
        raise InvalidInput("batch: from 1 to 100 desktops at a time", field="batch")
    if not 0 <= soak_s <= 86400:
        raise InvalidInput("soak_s: from 0 to 86400 seconds", field="soak_s")
    try:
        canary_size(canary, 1)
    except ValueError as err:
        raise InvalidInput(f"canary: {err} (a number of desktops, or a percentage like 10%)",
                           field="canary") from None
    th = thresholds or Thresholds()
    with session_scope(ctx.engine) as session:
        pool = pools.get_or_raise(session=session, name=pool_name)
        target = images.resolve(session=session, ref=image)
        if repo.active_for(session=session, pool_id=pool.id or 0, lock=True) is not None:
            raise Conflict(f"pool: {pool_name} has a rollout in progress (roll it back or let it finish)",
                           field="pool")
        if target.id == pool.image_id:
            raise InvalidInput(f"image: pool {pool_name} already uses {target.name}:{target.version}", field="image")
        rollout = Rollout(pool_id=pool.id or 0, from_image_id=pool.image_id, to_image_id=target.id or 0,
                          state=RolloutState.CANARY.value, canary=canary.strip(), batch=batch, soak_s=soak_s,
                          thresholds=asdict(th), actor=actor, started_at=ctx.clock.now(), updated_at=ctx.clock.now())
        session.add(rollout)
        session.flush()
        audit.append(session=session, actor=actor, action="rollout.start", target=pool_name,
                     rollout=rollout.id, to_image=f"{target.name}:{target.version}", canary=rollout.canary,
                     batch=batch, soak_s=soak_s, thresholds=asdict(th))
        return _public(session, rollout, pool)


def status(ctx: Context, pool_name: str) -> RolloutPublic:
    """The pool's current rollout, or its last one."""
    with session_scope(ctx.engine) as session:
        pool = pools.get_or_raise(session=session, name=pool_name)
        rollout = repo.latest_for(session=session, pool_id=pool.id or 0)
        if rollout is None:
            raise InvalidInput(f"pool: {pool_name} has had no rollout", field="pool")
        return _public(session, rollout, pool)


def roll_back(ctx: Context, pool_name: str, *, actor: str, reason: str = "") -> RolloutPublic:
    """Stop the pool's rollout and point it back at the previous version (an admin's decision)."""
    with session_scope(ctx.engine) as session:
        pool = pools.get_or_raise(session=session, name=pool_name)
        rollout = repo.active_for(session=session, pool_id=pool.id or 0, lock=True)
        if rollout is None:
            raise InvalidInput(f"pool: {pool_name} has no rollout in progress", field="pool")
        view = _view(rollout, pool)
        decision = rollback(view, _slots(session, pool), f"rolled back by {actor}" + (f": {reason}" if reason else ""))
        _apply(session, ctx, pool, rollout, decision, actor=actor)
        return _public(session, rollout, pool)


def advance(ctx: Context) -> int:
    """One step of every active rollout (the reconciler calls this each pass). Returns how many
    rollouts are still active."""
    with session_scope(ctx.engine) as session:
        ids = [(r.id or 0, r.pool_id) for r in repo.all_active(session=session)]
    active = 0
    for rollout_id, pool_id in ids:
        try:
            active += _advance_one(ctx, rollout_id, pool_id)
        except Exception:  # one pool's rollout must not stop the others (or the reconciler)
            log.exception("rollout %s: step failed; next pass tries again", rollout_id)
            active += 1
    return active


def _advance_one(ctx: Context, rollout_id: int, pool_id: int) -> int:
    with session_scope(ctx.engine) as session:
        rollout = session.get(Rollout, rollout_id, with_for_update=True)
        pool = session.get(Pool, pool_id)
        if rollout is None or pool is None or not RolloutState(rollout.state).active:
            return 0
        view = _view(rollout, pool)
        decision = decide(view, _slots(session, pool), _stats(session, rollout_id), ctx.clock.now())
        _apply(session, ctx, pool, rollout, decision, actor=ACTOR)
        return int(RolloutState(rollout.state).active)


def _apply(session: Session, ctx: Context, pool: Pool, rollout: Rollout, d: Decision, *, actor: str) -> None:
    now = ctx.clock.now()
    for desktop_id in d.rebuild:
        row = desktop_repo.lock(session=session, desktop_id=desktop_id)
        if row is None or row.state != S.READY or row.assigned_to is not None:
            continue  # someone signed in to it meanwhile: theirs now, never rebuilt under them
        desktop_repo.mark_rebuild(session=session, desktop=row, image_id=d.rebuild_to, now=now, reason="rollout")
        audit.append(session=session, actor=actor, action="desktop.rebuild", target=row.name,
                     generation=row.generation, image_id=d.rebuild_to, rollout=rollout.id)
    if d.pool_image is not None and pool.image_id != d.pool_image:
        pool.image_id = d.pool_image
        session.add(pool)
    if d.state is not None:
        rollout.state, rollout.reason, rollout.updated_at = d.state.value, d.reason, now
        session.add(rollout)
        audit.append(session=session, actor=actor, action=f"rollout.{d.state.value}", target=pool.name,
                     rollout=rollout.id, reason=d.reason)
        (log.warning if d.state == RolloutState.ROLLED_BACK else log.info)(
            "rollout %s of pool %s: %s (%s)", rollout.id, pool.name, d.state.value, d.reason)


@dataclass(frozen=True)
class RolloutSummary:
    pool: str
    state: RolloutState
    desktops: dict[str, int] | None  # live desktops by version while it is active


def overview(ctx: Context) -> list[RolloutSummary]:
    """Every pool's rollout in progress or last one, for /metrics: read at each scrape, so it
    counts desktops of active rollouts only and leaves the signals alone."""
    with session_scope(ctx.engine) as session:
        return [RolloutSummary(pool.name, RolloutState(r.state),
                               _by_version(session, r, pool) if RolloutState(r.state).active else None)
                for r in repo.latest_per_pool(session=session)
                if (pool := session.get(Pool, r.pool_id)) is not None]


# --- signals (called inside the transaction that records what happened) --------------------------


def note(session: Session, desktop: Desktop, signal: Signal, value: float = 0.0, *,
         also: tuple[Signal, ...] = ()) -> None:
    """Record SIGNAL (and the signals in ALSO, with the same value) about DESKTOP if its pool is
    rolling out and it runs one of the two versions: one look for the rollout."""
    rollout = repo.active_for(session=session, pool_id=desktop.pool_id)
    if rollout is None:
        return
    if desktop.image_id == rollout.to_image_id:
        version = Version.NEW
    elif desktop.image_id == rollout.from_image_id:
        version = Version.OLD
    else:
        return
    for each in (signal, *also):
        session.add(RolloutSignal(rollout_id=rollout.id or 0, version=version.value, signal=each.value,
                                  value=value, desktop=desktop.name))


def note_session_end(session: Session, desktop: Desktop, *, dropped: bool, lasted_s: float) -> None:
    """A display session ended; DROPPED when the desktop side ended it, early when within EARLY_DROP_S."""
    early_drop = dropped and lasted_s < EARLY_DROP_S
    note(session, desktop, Signal.SESSION, lasted_s, also=(Signal.DROP,) if early_drop else ())


# --- views ---------------------------------------------------------------------------------------


def _view(rollout: Rollout, pool: Pool) -> RolloutView:
    desired = bounded_size(pool.target_size, pool.min_size, pool.max_size)
    return RolloutView(state=RolloutState(rollout.state), from_image=rollout.from_image_id,
                       to_image=rollout.to_image_id, canary=canary_size(rollout.canary, max(desired, 1)),
                       batch=rollout.batch, soak=timedelta(seconds=rollout.soak_s),
                       thresholds=Thresholds(**rollout.thresholds), desired=0 if pool.deleting else desired)


def _slots(session: Session, pool: Pool) -> list[Slot]:
    return [Slot(id=d.id or 0, image_id=d.image_id, state=d.state, assigned=d.assigned_to is not None,
                 since=d.state_since) for d in desktop_repo.list_all(session=session, pool_id=pool.id)]


def _stats(session: Session, rollout_id: int) -> dict[Version, VersionStats]:
    return stats_of((Version(s.version), Signal(s.signal), s.value)
                    for s in repo.signals(session=session, rollout_id=rollout_id))


def _by_version(session: Session, rollout: Rollout, pool: Pool) -> dict[str, int]:
    """The pool's live desktops, counted by version: old (anything but the new one) and new."""
    live = [d for d in desktop_repo.list_all(session=session, pool_id=pool.id) if d.state in LIVE]
    new = sum(d.image_id == rollout.to_image_id for d in live)
    return {"old": len(live) - new, "new": new}


def _public(session: Session, rollout: Rollout, pool: Pool) -> RolloutPublic:
    def ref(image_id: int) -> str:
        image = images.get(session=session, image_id=image_id)
        return f"{image.name}:{image.version}" if image else str(image_id)

    stats = _stats(session, rollout.id or 0)
    return RolloutPublic(
        id=rollout.id or 0, pool=pool.name, state=RolloutState(rollout.state), from_image=ref(rollout.from_image_id),
        to_image=ref(rollout.to_image_id), canary=rollout.canary, batch=rollout.batch, soak_s=rollout.soak_s,
        thresholds=rollout.thresholds, reason=rollout.reason, actor=rollout.actor,
        desktops=_by_version(session, rollout, pool),
        stats={v.value: {"provisioned": s.provisioned, "failed": s.failed, "median_ready_s": s.median_ready_s,
                         "restarts": s.restarts, "sessions": s.sessions, "drops": s.drops}
               for v, s in stats.items()})
