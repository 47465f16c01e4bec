"""Rollout decisions as pure functions: the canary, one batch at a time, the signals' verdict."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.rollout import (
    RolloutState,
    RolloutView,
    Signal,
    Slot,
    Thresholds,
    Version,
    VersionStats,
    canary_size,
    decide,
    stats_of,
    verdict,
)

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
OLD, NEW = 1, 2
CALM = {Version.OLD: VersionStats(), Version.NEW: VersionStats()}


def view(state=RolloutState.CANARY, canary=1, batch=2, soak=60) -> RolloutView:
    return RolloutView(state=state, from_image=OLD, to_image=NEW, canary=canary, batch=batch,
                       soak=timedelta(seconds=soak))


def slot(i, image=OLD, state=S.READY, assigned=False, age=3600) -> Slot:
    return Slot(id=i, image_id=image, state=state, assigned=assigned, since=NOW - timedelta(seconds=age))


def test_the_canary_takes_idle_desktops_only():
    slots = [slot(1, state=S.IN_USE, assigned=True), slot(2), slot(3), slot(4, state=S.PROVISIONING)]
    d = decide(view(canary=2), slots, CALM, NOW)
    assert d.rebuild == (2, 3) and d.rebuild_to == NEW and d.state is None and d.pool_image is None


def test_the_canary_serves_its_soak_all_ready_before_the_rollout_goes_on():
    booting = [slot(1, image=NEW, state=S.PROVISIONING), slot(2)]
    assert decide(view(), booting, CALM, NOW).state is None
    fresh = [slot(1, image=NEW, age=10), slot(2)]
    assert decide(view(soak=60), fresh, CALM, NOW).state is None
    soaked = [slot(1, image=NEW, age=61), slot(2)]
    d = decide(view(soak=60), soaked, CALM, NOW)
    assert (d.state, d.pool_image, d.rebuild) == (RolloutState.ROLLING, NEW, ())


def test_rolling_replaces_one_batch_at_a_time_and_finishes_when_no_old_desktop_is_left():
    slots = [slot(1, image=NEW), slot(2), slot(3), slot(4), slot(5, state=S.IN_USE, assigned=True)]
    assert decide(view(RolloutState.ROLLING, batch=2), slots, CALM, NOW).rebuild == (2, 3)
    slots[1] = slot(2, image=NEW, state=S.PROVISIONING)
    assert decide(view(RolloutState.ROLLING, batch=2), slots, CALM, NOW).rebuild == ()  # batch in flight
    done = [slot(1, image=NEW), slot(2, image=NEW), slot(6, image=OLD, state=S.FAILED)]
    assert decide(view(RolloutState.ROLLING), done, CALM, NOW).state == RolloutState.DONE
    regrowing = replace(view(RolloutState.ROLLING), desired=3)  # a replacement is yet to be created
    assert decide(regrowing, done, CALM, NOW).state is None
    waiting = [slot(1, image=NEW), slot(5, state=S.IN_USE, assigned=True)]  # never under a working agent
    d = decide(view(RolloutState.ROLLING), waiting, CALM, NOW)
    assert d.rebuild == () and d.state is None


def test_worse_signals_roll_back_and_rebuild_idle_new_desktops():
    bad = {Version.OLD: VersionStats(provisioned=10), Version.NEW: VersionStats(provisioned=2, failed=1)}
    slots = [slot(1, image=NEW), slot(2, image=NEW, state=S.IN_USE, assigned=True), slot(3)]
    d = decide(view(RolloutState.ROLLING), slots, bad, NOW)
    assert d.state == RolloutState.ROLLED_BACK and d.pool_image == OLD
    assert d.rebuild == (1,) and d.rebuild_to == OLD and d.reason.startswith("halted: provisioning failures 50%")


@pytest.mark.parametrize("old,new,words", [
    (VersionStats(provisioned=4, ready_s=(2, 2, 2, 2)), VersionStats(provisioned=2, ready_s=(5, 5)),
     "time to ready 5.0 s against 2.0 s"),
    (VersionStats(provisioned=4, restarts=0), VersionStats(provisioned=2, restarts=2), "restarts 1.00"),
    (VersionStats(provisioned=4, sessions=10, drops=0), VersionStats(provisioned=2, sessions=4, drops=2),
     "sessions dropped early 50%"),
])
def test_each_signal_has_its_threshold(old, new, words):
    (reason,) = verdict(old, new, Thresholds())
    assert words in reason


def test_within_thresholds_or_too_few_samples_is_no_verdict():
    old = VersionStats(provisioned=10, failed=1, ready_s=(10.0,) * 9)
    assert verdict(old, VersionStats(provisioned=5, failed=1, ready_s=(15.0,) * 4), Thresholds()) == []
    assert verdict(old, VersionStats(provisioned=1, failed=1), Thresholds(min_samples=2)) == []


def test_signals_aggregate_by_version():
    stats = stats_of([(Version.NEW, Signal.READY, 3.0), (Version.NEW, Signal.READY, 5.0),
                      (Version.NEW, Signal.FAILED, 0.0), (Version.OLD, Signal.SESSION, 9.0),
                      (Version.OLD, Signal.DROP, 9.0), (Version.OLD, Signal.RESTART, 0.0)])
    assert stats[Version.NEW] == VersionStats(provisioned=3, failed=1, ready_s=(3.0, 5.0))
    assert stats[Version.NEW].median_ready_s == 4.0
    assert stats[Version.OLD] == VersionStats(restarts=1, sessions=1, drops=1)


@pytest.mark.parametrize("spec,desired,size", [("1", 10, 1), ("3", 2, 3), ("10%", 25, 3), ("50%", 1, 1),
                                               ("100%", 8, 8)])
def test_canary_sizes(spec, desired, size):
    assert canary_size(spec, desired) == size


@pytest.mark.parametrize("spec", ["0", "-1", "0%", "101%", "x", ""])
def test_bad_canary_sizes_are_refused(spec):
    with pytest.raises(ValueError):
        canary_size(spec, 10)
