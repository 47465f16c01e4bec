"""Rollouts and their signals."""

from __future__ import annotations

from sqlmodel import Session, col, select

from controlplane.db.models import Rollout, RolloutSignal

ACTIVE = ("canary", "rolling")  # RolloutState.active, as stored


def active_for(*, session: Session, pool_id: int, lock: bool = False) -> Rollout | None:
    query = select(Rollout).where(Rollout.pool_id == pool_id, col(Rollout.state).in_(ACTIVE))
    return session.exec(query.with_for_update() if lock else query).first()


def latest_for(*, session: Session, pool_id: int) -> Rollout | None:
    return session.exec(select(Rollout).where(Rollout.pool_id == pool_id)
                        .order_by(col(Rollout.id).desc())).first()


def all_active(*, session: Session) -> list[Rollout]:
    return list(session.exec(select(Rollout).where(col(Rollout.state).in_(ACTIVE))).all())


def signals(*, session: Session, rollout_id: int) -> list[RolloutSignal]:
    return list(session.exec(select(RolloutSignal).where(RolloutSignal.rollout_id == rollout_id)).all())


def latest_per_pool(*, session: Session) -> list[Rollout]:
    latest: dict[int, Rollout] = {}
    for rollout in session.exec(select(Rollout).order_by(col(Rollout.id))):
        latest[rollout.pool_id] = rollout
    return list(latest.values())


def active_using(*, session: Session, image_id: int) -> list[Rollout]:
    """Rollouts in progress from or to IMAGE_ID (a rollback needs the old version, progress the new)."""
    return [r for r in all_active(session=session) if image_id in (r.from_image_id, r.to_image_id)]
