"""Image rollouts through the real reconciler on the fake hypervisor: canary, batches, done; never
under a working agent; a worse new version rolls itself back; an admin's rollback; bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.rollout import Decision, RolloutState, Thresholds
from controlplane.domain.session import EndReason
from controlplane.errors import Conflict, InvalidInput
from controlplane.services import broker, desktops, images, pools, rollouts
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import AGENTS, end_session, open_session


@pytest.fixture
def versions(ctx, image):
    ctx.builder.variant = "2"
    return image, images.build(ctx, "busybox-desktop", actor="test")


def passes(ctx, n=1):
    rec = Reconciler(ctx)
    try:
        for _ in range(n):
            rec.pass_once()
    finally:
        rec.close()


def by_image(ctx):
    rows = [d for d, _ in desktops.list_all(ctx) if d.state in (S.PROVISIONING, S.READY, S.IN_USE)]
    return sorted((d.image_id, str(d.state)) for d in rows)


def actions(ctx):
    with session_scope(ctx.engine) as session:
        return [e.action for e in audit.list_recent(session=session, limit=500)]


def test_canary_then_batches_until_every_desktop_runs_the_new_version(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=4, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    r = rollouts.start(ctx, "sales", image="busybox-desktop:2", canary="1", batch=2, soak_s=0, actor="admin")
    assert (r.state, r.desktops) == (RolloutState.CANARY, {"old": 4, "new": 0})
    passes(ctx)
    assert [i for i, _ in by_image(ctx)].count(v2.id) == 1  # the canary alone
    assert rollouts.status(ctx, "sales").state == RolloutState.CANARY
    passes(ctx, 12)
    r = rollouts.status(ctx, "sales")
    assert r.state == RolloutState.DONE, r
    assert by_image(ctx) == [(v2.id, "ready")] * 4
    assert pools.views(ctx, "sales")[0].image == "busybox-desktop:2"
    assert r.stats["new"]["provisioned"] == 4 and r.stats["new"]["failed"] == 0
    seen = actions(ctx)
    assert {"rollout.start", "rollout.rolling", "rollout.done"} <= set(seen)


def test_a_desktop_in_a_session_keeps_its_version_until_its_agent_is_done(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=2, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    c = broker.connect(ctx, Claims("alice", "agent", (AGENTS,), "j", 0), "sales")
    mine, _ = desktops.get(ctx, c.desktop)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", canary="1", batch=5, soak_s=0, actor="admin")
    passes(ctx, 12)
    kept, _ = desktops.get(ctx, c.desktop)
    assert (kept.image_id, kept.generation, kept.state) == (v1.id, mine.generation, S.IN_USE)
    assert rollouts.status(ctx, "sales").state == RolloutState.ROLLING  # waits for alice
    end_session(ctx, open_session(ctx, "sales", connection=c, grace_s=0))  # she signs off: no coming back
    ctx.clock.advance(1)
    passes(ctx, 8)
    assert rollouts.status(ctx, "sales").state == RolloutState.DONE
    assert by_image(ctx) == [(v2.id, "ready")] * 2


def test_a_sign_in_between_plan_and_rebuild_wins(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=1, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", actor="admin")
    (row, _), = desktops.list_all(ctx)
    broker.connect(ctx, Claims("alice", "agent", (AGENTS,), "j", 0), "sales")  # after the plan saw it idle
    with session_scope(ctx.engine) as session:
        from controlplane.db.models import Pool, Rollout
        rollout = session.get(Rollout, 1)
        rollouts._apply(session, ctx, session.get(Pool, row.pool_id), rollout,
                        Decision(rebuild=(row.id,), rebuild_to=v2.id), actor="rollout")
    after, _ = desktops.get(ctx, row.name)
    assert (after.state, after.image_id, after.generation) == (S.IN_USE, v1.id, row.generation)


def test_a_failing_new_version_halts_and_rolls_back_by_itself(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=3, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    ctx.hypervisor.broken_images = frozenset({v2.id})
    rollouts.start(ctx, "sales", image="busybox-desktop:2", canary="1", batch=1, soak_s=0, actor="admin")
    passes(ctx, 10)
    r = rollouts.status(ctx, "sales")
    assert r.state == RolloutState.ROLLED_BACK
    assert r.reason.startswith("halted: provisioning failures 100% on the new version against 0%"), r.reason
    assert pools.views(ctx, "sales")[0].image == "busybox-desktop:1"
    assert by_image(ctx) == [(v1.id, "ready")] * 3  # the failed canary replaced from the old version
    assert "rollout.rolled_back" in actions(ctx)


def test_early_dropped_sessions_on_the_new_version_count_against_it(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=1, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", canary="1", soak_s=3600, actor="admin",
                   thresholds=Thresholds(drop_rate=0.5))
    passes(ctx, 4)
    for reason in (EndReason.DESKTOP_CLOSED, "dropped: ConnectionResetError"):
        live = open_session(ctx, "sales")
        assert desktops.get(ctx, live.desktop)[0].image_id == v2.id  # the canary: the pool's one desktop
        end_session(ctx, live, reason)
    new = rollouts.status(ctx, "sales").stats["new"]
    assert (new["sessions"], new["drops"]) == (2, 2)
    passes(ctx, 2)
    r = rollouts.status(ctx, "sales")
    assert r.state == RolloutState.ROLLED_BACK and "sessions dropped early 100%" in r.reason


def test_an_admin_rolls_back(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=2, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", canary="1", soak_s=3600, actor="admin")
    passes(ctx, 6)
    assert sorted(i for i, _ in by_image(ctx)) == [v1.id, v2.id]
    r = rollouts.roll_back(ctx, "sales", actor="admin", reason="agents report a broken softphone")
    assert r.state == RolloutState.ROLLED_BACK and r.reason == "rolled back by admin: agents report a broken softphone"
    passes(ctx, 6)
    assert by_image(ctx) == [(v1.id, "ready")] * 2
    with pytest.raises(InvalidInput, match="no rollout in progress"):
        rollouts.roll_back(ctx, "sales", actor="admin")


@pytest.mark.parametrize("kwargs,field", [
    ({"canary": "0"}, "canary"), ({"canary": "150%"}, "canary"), ({"canary": "many"}, "canary"),
    ({"batch": 0}, "batch"), ({"soak_s": -1}, "soak_s"), ({"image": "busybox-desktop:1"}, "image"),
    ({"image": "nope"}, None),
])
def test_bad_input_names_the_field_and_changes_nothing(ctx, versions, kwargs, field):
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=0, groups=[AGENTS], actor="t")
    args = {"image": "busybox-desktop:2", **kwargs}
    with pytest.raises((InvalidInput, Exception)) as err:
        rollouts.start(ctx, "sales", actor="admin", **args)
    if field:
        assert getattr(err.value, "field", None) == field
    with pytest.raises(InvalidInput, match="no rollout"):
        rollouts.status(ctx, "sales")


def test_one_rollout_at_a_time_and_an_empty_pool_is_done_at_once(ctx, versions):
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=0, groups=[AGENTS], actor="t")
    rollouts.start(ctx, "sales", image="busybox-desktop:2", actor="admin")
    with pytest.raises(Conflict):
        rollouts.start(ctx, "sales", image="busybox-desktop:2", actor="admin")
    passes(ctx)
    assert rollouts.status(ctx, "sales").state == RolloutState.DONE
    assert pools.views(ctx, "sales")[0].image == "busybox-desktop:2"


def test_thresholds_are_kept_as_given(ctx, versions):
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=0, groups=[AGENTS], actor="t")
    th = replace(Thresholds(), failure_rate=0.05, min_samples=3)
    r = rollouts.start(ctx, "sales", image="busybox-desktop:2", thresholds=th, actor="admin")
    assert r.thresholds["failure_rate"] == 0.05 and r.thresholds["min_samples"] == 3


def test_the_old_version_stays_while_a_desktop_uses_it_and_can_go_after(ctx, versions):
    v1, v2 = versions
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=1, groups=[AGENTS], actor="t")
    passes(ctx, 6)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", soak_s=3600, actor="admin")
    with pytest.raises(Conflict, match="rollout in progress"):
        images.delete(ctx, "busybox-desktop:2", actor="admin")  # no desktop runs it yet: the rollout needs it
    passes(ctx, 4)
    with pytest.raises(Conflict):
        images.delete(ctx, "busybox-desktop:2", actor="admin")  # the canary runs it
    rollouts.roll_back(ctx, "sales", actor="admin")
    passes(ctx, 6)
    images.delete(ctx, "busybox-desktop:2", actor="admin")  # nothing uses it now; the history stays
    assert rollouts.status(ctx, "sales").to_image == str(v2.id)
