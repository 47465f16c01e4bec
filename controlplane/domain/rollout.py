"""Image rollouts: a pool moves to a new image version a few desktops at a time, never under a
working agent, and goes back by itself when the new version serves agents worse.

A rollout goes canary -> rolling -> done, or ends rolled back (halted by its signals or by an
admin). Only idle desktops (ready, nobody assigned) are rebuilt: a desktop in a session keeps its
version until its agent is done with it, and is then replaced from the pool's image like any
recycled desktop. Pure functions of plain values: `decide` is called on every reconcile pass
with the rollout, its desktops and the signals gathered so far, and says what to do next.

Signals compare the two versions over the same window (the rollout's lifetime), so a busy hour
or a slow host weighs on both alike:
- provisioning failures per desktop provisioned,
- median seconds to ready (boot or restore),
- restarts and crashes per desktop provisioned (a desktop found powered off or gone),
- sessions dropped by the desktop side within EARLY_DROP_S of their start, per session.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from controlplane.domain.desktop import DesktopState

EARLY_DROP_S = 300.0  # a session the desktop side ends this soon after it began counts as dropped


class RolloutState(StrEnum):
    CANARY = "canary"
    ROLLING = "rolling"
    DONE = "done"
    ROLLED_BACK = "rolled_back"

    @property
    def active(self) -> bool:
        return self in (RolloutState.CANARY, RolloutState.ROLLING)


class Signal(StrEnum):
    READY = "ready"  # value: seconds to ready
    FAILED = "failed"
    RESTART = "restart"
    SESSION = "session"
    DROP = "drop"


class Version(StrEnum):
    OLD = "old"
    NEW = "new"


@dataclass(frozen=True)
class Thresholds:
    """How much worse the new version may be than the old before the rollout halts."""

    failure_rate: float = 0.2  # extra provisioning failures per desktop provisioned
    ready_ratio: float = 2.0  # new median time to ready / old median
    restart_rate: float = 0.5  # extra restarts per desktop provisioned
    drop_rate: float = 0.2  # extra early-dropped sessions per session
    min_samples: int = 1  # desktops of the new version provisioned before any judgement


@dataclass(frozen=True)
class VersionStats:
    provisioned: int = 0  # reached ready or failed
    failed: int = 0
    ready_s: tuple[float, ...] = ()
    restarts: int = 0
    sessions: int = 0
    drops: int = 0

    def rate(self, count: int, per: int) -> float:
        return count / per if per else 0.0

    @property
    def median_ready_s(self) -> float | None:
        return statistics.median(self.ready_s) if self.ready_s else None


def stats_of(signals: Iterable[tuple[Version, Signal, float]]) -> dict[Version, VersionStats]:
    """Aggregate (version, signal, value) rows into one VersionStats per version."""
    acc: dict[Version, dict] = {v: {"ready_s": [], "failed": 0, "restarts": 0, "sessions": 0, "drops": 0}
                                for v in Version}
    for version, signal, value in signals:
        a = acc[version]
        if signal == Signal.READY:
            a["ready_s"].append(value)
        else:
            a[{Signal.FAILED: "failed", Signal.RESTART: "restarts", Signal.SESSION: "sessions",
               Signal.DROP: "drops"}[signal]] += 1
    return {v: VersionStats(provisioned=len(a["ready_s"]) + a["failed"], failed=a["failed"],
                            ready_s=tuple(a["ready_s"]), restarts=a["restarts"], sessions=a["sessions"],
                            drops=a["drops"]) for v, a in acc.items()}


def verdict(old: VersionStats, new: VersionStats, th: Thresholds) -> list[str]:
    """Why the new version is worse beyond the thresholds (empty: it is not, or too early to say)."""
    if new.provisioned < th.min_samples:
        return []
    reasons = []
    fail_new, fail_old = new.rate(new.failed, new.provisioned), old.rate(old.failed, old.provisioned)
    if fail_new - fail_old > th.failure_rate:
        reasons.append(f"provisioning failures {fail_new:.0%} on the new version against {fail_old:.0%}")
    if new.median_ready_s is not None and old.median_ready_s:
        ratio = new.median_ready_s / old.median_ready_s
        if ratio > th.ready_ratio:
            reasons.append(f"time to ready {new.median_ready_s:.1f} s against {old.median_ready_s:.1f} s "
                           f"({ratio:.1f}x)")
    restart_new = new.rate(new.restarts, new.provisioned)
    restart_old = old.rate(old.restarts, old.provisioned)
    if restart_new - restart_old > th.restart_rate:
        reasons.append(f"restarts {restart_new:.2f} per desktop against {restart_old:.2f}")
    drop_new, drop_old = new.rate(new.drops, new.sessions), old.rate(old.drops, old.sessions)
    if new.sessions and drop_new - drop_old > th.drop_rate:
        reasons.append(f"sessions dropped early {drop_new:.0%} against {drop_old:.0%}")
    return reasons


@dataclass(frozen=True)
class Slot:
    """A desktop of the pool as the rollout sees it."""

    id: int
    image_id: int
    state: DesktopState
    assigned: bool
    since: datetime


@dataclass(frozen=True)
class RolloutView:
    state: RolloutState
    from_image: int
    to_image: int
    canary: int  # desktops (already resolved from a percentage)
    batch: int
    soak: timedelta  # the canary serves this long, all ready, before the rollout goes on
    thresholds: Thresholds = field(default_factory=Thresholds)
    desired: int = 0  # the pool's size: done only once it is whole again (a replacement may be on its way)


@dataclass(frozen=True)
class Decision:
    rebuild: tuple[int, ...] = ()  # idle desktops to rebuild from `rebuild_to`
    rebuild_to: int = 0
    state: RolloutState | None = None  # the rollout's next state, if it changes
    pool_image: int | None = None  # point the pool at this image (new desktops are made from it)
    reason: str = ""


LIVE = (DesktopState.PROVISIONING, DesktopState.READY, DesktopState.IN_USE, DesktopState.DRAINING)


def decide(r: RolloutView, slots: list[Slot], stats: dict[Version, VersionStats], now: datetime) -> Decision:
    """The next step of rollout R over the pool's desktops SLOTS."""
    if not r.state.active:
        return Decision()
    reasons = verdict(stats[Version.OLD], stats[Version.NEW], r.thresholds)
    if reasons:
        return rollback(r, slots, "halted: " + "; ".join(reasons))
    live = [s for s in slots if s.state in LIVE]
    if not live:
        return Decision(state=RolloutState.DONE, pool_image=r.to_image, reason="no desktops to replace")
    new = [s for s in live if s.image_id == r.to_image]
    idle_old = sorted((s for s in live if s.image_id != r.to_image and s.state == DesktopState.READY
                       and not s.assigned), key=lambda s: s.id)
    settling = [s for s in new if s.state == DesktopState.PROVISIONING]
    if r.state == RolloutState.CANARY:
        if len(new) < r.canary:
            return Decision(rebuild=tuple(s.id for s in idle_old[: r.canary - len(new)]), rebuild_to=r.to_image)
        if settling or any(now - s.since < r.soak for s in new):
            return Decision()  # the canary serves its soak time, all of it ready
        return Decision(state=RolloutState.ROLLING, pool_image=r.to_image, reason="canary healthy")
    if settling:
        return Decision()  # one batch at a time, watched until it is ready
    if not any(s.image_id != r.to_image for s in live) and len(live) >= r.desired:
        return Decision(state=RolloutState.DONE, reason="every desktop runs the new version")
    return Decision(rebuild=tuple(s.id for s in idle_old[: r.batch]), rebuild_to=r.to_image)


def rollback(r: RolloutView, slots: list[Slot], reason: str) -> Decision:
    """Point the pool back at the old version and rebuild the idle desktops of the new one."""
    back = tuple(s.id for s in slots if s.image_id == r.to_image and s.state == DesktopState.READY
                 and not s.assigned)
    return Decision(rebuild=back, rebuild_to=r.from_image, state=RolloutState.ROLLED_BACK,
                    pool_image=r.from_image, reason=reason)


def canary_size(spec: str, desired: int) -> int:
    """'2' -> 2 desktops; '10%' -> 10% of the pool's desired size, rounded up; at least 1."""
    text = spec.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 < percent <= 100:
            raise ValueError("a percentage from 1% to 100%")
        return max(1, -(-int(percent * desired) // 100))
    count = int(text)
    if count < 1:
        raise ValueError("at least one desktop")
    return count
