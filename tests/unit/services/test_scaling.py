"""Rosters applied to pools, the scheduler's wake-ups, reactive top-up and a safe ramp-down."""

from __future__ import annotations

import time as walltime
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import inspect

from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.session import EndReason
from controlplane.errors import Conflict, InvalidInput
from controlplane.scheduler.jobs import ShiftScheduler
from controlplane.services import broker, desktops, pools, scaling, sessions
from controlplane.services.reconciler import Reconciler
from controlplane.services.scaling import RosterFilesInvalid
from controlplane.services.tokens import Claims
from tests.conftest import AGENTS

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = {"sales.yaml": (ROOT / "policies" / "rosters" / "sales.yaml").read_text()}
# Tuesday 24 November 2026, 08:00 UTC = 09:00 Berlin: the early shift (30 + buffer 3) is on
SMALL = """pool: sales
timezone: UTC
min: 1
max: 20
buffer: {min: 1}
prewarm_minutes: 10
ramp_down: {logoff_after_minutes: 5}
shifts:
  - {name: day, days: [tue], start: "08:05", end: "08:30", headcount: 3}
"""


def settle(ctx):
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()


@pytest.fixture
def sales(ctx, image):
    return pools.create(ctx, name="sales", image="busybox-desktop", size=0, groups=[AGENTS], actor="t")


def test_example_roster_is_valid():
    (roster,) = scaling.validate(EXAMPLE)
    assert roster.pool == "sales" and len(roster.shifts) == 4 and roster.events


@pytest.mark.parametrize("text,where", [
    (SMALL.replace("timezone: UTC", "timezone: Mars/Olympus"), (2, "timezone")),
    (SMALL.replace('"08:05"', '"25:00"'), (9, "shifts.0.start")),
    (SMALL.replace("[tue]", "[tuesday]"), (9, "shifts.0.days.0")),
    (SMALL.replace("min: 1\n", "min: 30\n"), (3, "min")),
    (SMALL + "colour: red\n", (10, "colour")),
    (SMALL.replace('"08:30"', '"08:05"'), (9, "shifts.0.end")),
])
def test_bad_rosters_name_file_line_and_field(text, where):
    with pytest.raises(RosterFilesInvalid) as e:
        scaling.validate({"r.yaml": text})
    assert ("r.yaml", *where) in [(x.file, x.line, x.field) for x in e.value.errors], str(e.value)


def test_apply_needs_known_pools_and_changes_nothing_otherwise(ctx, sales):
    with pytest.raises(InvalidInput, match="does not exist"):
        scaling.apply(ctx, {"a.yaml": SMALL, "b.yaml": SMALL.replace("pool: sales", "pool: nosuch")}, actor="t")
    with pytest.raises(Exception):
        scaling.show(ctx, "sales")
    assert scaling.apply(ctx, {"a.yaml": SMALL}, actor="t") == ["sales"]
    assert scaling.apply(ctx, {"a.yaml": SMALL}, actor="t") == []  # unchanged


def decisions(direction: str) -> float:
    return REGISTRY.get_sample_value("shiftdesk_scheduler_decisions_total", {"direction": direction}) or 0.0


def test_evaluate_prewarms_then_scales_down(ctx, clock, sales):
    scaling.apply(ctx, {"a.yaml": SMALL}, actor="t")
    clock.t = datetime(2026, 11, 24, 7, 50, tzinfo=UTC)  # 15 min before the shift, lead is 10
    scaling.evaluate(ctx)
    assert pools.get(ctx, "sales").target_size == 1  # min
    clock.t = datetime(2026, 11, 24, 7, 55, tzinfo=UTC)  # lead reached
    grown, shrunk = (decisions(d) for d in ("grow", "shrink"))
    assert scaling.evaluate(ctx) == {"sales": (1, 4)}  # 3 + buffer 1
    settle(ctx)
    assert len(desktops.list_all(ctx, "sales")) == 4
    clock.t = datetime(2026, 11, 24, 8, 31, tzinfo=UTC)
    assert scaling.evaluate(ctx) == {"sales": (4, 1)}
    assert [decisions(d) for d in ("grow", "shrink")] == [grown + 1, shrunk + 1]  # /metrics counts them


def test_reactive_top_up_when_more_agents_arrive(ctx, clock, sales):
    scaling.apply(ctx, {"a.yaml": SMALL}, actor="t")
    clock.t = datetime(2026, 11, 24, 8, 10, tzinfo=UTC)
    scaling.evaluate(ctx)
    settle(ctx)
    ctx.directory = None  # made-up agents the directory does not know
    for i in range(4):  # four agents for three rostered seats
        broker.connect(ctx, Claims(f"a{i}", "agent", (AGENTS,), "j", 0), "sales")
    scaling.evaluate(ctx)
    assert pools.get(ctx, "sales").target_size == 6  # 4 live + 1 still expected (a quarter of 3) + buffer 1
    clock.t = datetime(2026, 11, 24, 8, 20, tzinfo=UTC)
    scaling.evaluate(ctx)
    assert pools.get(ctx, "sales").target_size == 5  # later: 4 live + buffer 1


def test_ramp_down_never_destroys_a_desktop_with_a_live_session(ctx, clock, sales):
    scaling.apply(ctx, {"a.yaml": SMALL.replace("min: 1\n", "min: 0\n")}, actor="t")
    clock.t = datetime(2026, 11, 24, 8, 10, tzinfo=UTC)
    scaling.evaluate(ctx)
    settle(ctx)
    c = broker.connect(ctx, Claims("alice", "agent", (AGENTS,), "j", 0), "sales")
    target = broker.redeem(ctx, c.ticket, "alice")
    limits = sessions.Limits(idle_s=900, max_s=3600, grace_s=300)
    display = sessions.open_display(ctx, desktop_id=target.desktop_id, user="alice", jti="j", source="t",
                                    gateway="t", limits=limits, period_s=2)  # the gateway holds a live session
    clock.t = datetime(2026, 11, 24, 8, 31, tzinfo=UTC)  # the shift is over
    scaling.evaluate(ctx)
    rec = Reconciler(ctx)
    for _ in range(6):
        sessions.heartbeat(ctx, display, limits=limits, period_s=2)  # what the gateway does every period
        rec.pass_once()
        scaling.evaluate(ctx)  # keeps the live desktop, stamps its log-off time
        clock.advance(120)
        row, _ = desktops.get(ctx, c.desktop)
        assert row.state in (S.IN_USE, S.DRAINING), "a desktop with a live session was torn down"
    row, _ = desktops.get(ctx, c.desktop)
    assert row.state == S.IN_USE and row.logoff_at is not None  # kept while live, log-off scheduled
    verdict = sessions.heartbeat(ctx, display, limits=limits, period_s=2)
    assert verdict == EndReason.SHIFT_OVER  # the gateway now logs the agent off
    sessions.close_display(ctx, display, desktop=c.desktop, reason=verdict, bytes_in=0, bytes_out=0, events=[],
                           limits=limits, period_s=2)  # ...and its session ends: no grace after the shift
    clock.advance(1)
    for _ in range(4):
        rec.pass_once()
    rec.close()
    assert c.desktop not in {d.name for d, _ in desktops.list_all(ctx)}


def wait_until(predicate, seconds=10.0):
    deadline = walltime.monotonic() + seconds
    while walltime.monotonic() < deadline:
        if predicate():
            return True
        walltime.sleep(0.05)
    return False


def test_scheduler_down_across_a_shift_start_is_right_after_restart(ctx, clock, sales):
    scaling.apply(ctx, {"a.yaml": SMALL}, actor="t")
    clock.t = datetime(2026, 11, 24, 8, 20, tzinfo=UTC)  # the shift started 15 minutes ago; nobody ran
    assert pools.get(ctx, "sales").target_size == 0
    sched = ShiftScheduler(ctx, period_s=0.2)
    sched.start()
    try:
        assert wait_until(lambda: pools.get(ctx, "sales").target_size == 4)
        assert "apscheduler_jobs" in inspect(ctx.engine).get_table_names()  # jobs persist in our DB
    finally:
        sched.stop()
    settle(ctx)
    assert sum(1 for d, _ in desktops.list_all(ctx, "sales") if d.state == S.READY) == 4


def test_two_control_planes_never_both_scale(ctx, sales):
    a = ShiftScheduler(ctx, period_s=0.1, lease_ttl=timedelta(seconds=2))
    b = ShiftScheduler(ctx, period_s=0.1, lease_ttl=timedelta(seconds=2))
    a.start()
    b.start()
    try:
        assert wait_until(lambda: a.active or b.active)
        for _ in range(20):
            assert not (a.active and b.active)
            walltime.sleep(0.05)
        first, second = (a, b) if a.active else (b, a)
        assert second.evaluate() == {}  # a stand-by evaluation does nothing
        first.stop()
        assert wait_until(lambda: second.active), "the stand-by did not take over"
    finally:
        a.stop()
        b.stop()


def test_two_rosters_for_one_pool_are_refused():
    with pytest.raises(RosterFilesInvalid) as e:
        scaling.validate({"a.yaml": SMALL, "b.yaml": SMALL})
    assert [(x.file, x.field) for x in e.value.errors] == [("b.yaml", "pool")] and "a.yaml" in str(e.value)


def test_agents_can_see_their_ramp_down_log_off_time(ctx, clock, sales, settings):
    from fastapi.testclient import TestClient

    from controlplane.main import create_app
    from tests.conftest import USERS

    scaling.apply(ctx, {"a.yaml": SMALL.replace("min: 1\n", "min: 0\n")}, actor="t")
    clock.t = datetime(2026, 11, 24, 8, 10, tzinfo=UTC)
    scaling.evaluate(ctx)
    settle(ctx)
    with TestClient(create_app(settings, ctx)) as client:
        token = client.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][0]}).json()
        auth = {"Authorization": f"Bearer {token['token']}"}
        desktop = client.post("/api/v1/me/pools/sales/connect", headers=auth).json()["desktop"]
        mine = client.get("/api/v1/me/pools/sales/desktop", headers=auth).json()
        assert mine == {"desktop": desktop, "logoff_at": None}
        sessions.open_display(ctx, desktop_id=desktops.get(ctx, desktop)[0].id or 0, user="alice", jti="j",
                              source="t", gateway="t", limits=sessions.Limits(900, 3600, 300), period_s=2)
        clock.t = datetime(2026, 11, 24, 8, 31, tzinfo=UTC)
        scaling.evaluate(ctx)
        token = client.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][0]}).json()
        auth = {"Authorization": f"Bearer {token['token']}"}  # (the first token's 15 minutes are over)
        mine = client.get("/api/v1/me/pools/sales/desktop", headers=auth).json()
        assert mine["logoff_at"].startswith("2026-11-24T08:36")  # shift end + the roster's 5 minutes
        assert client.get("/api/v1/me/pools/other/desktop", headers=auth).status_code == 403


def break_stored_roster(ctx, pool: str, **changes) -> None:
    """Store a roster that no longer loads (validated by an older version, or its zone left tzdata)."""
    from controlplane.db import pools as pool_rows
    from controlplane.db import rosters
    from controlplane.db.engine import session_scope
    from controlplane.db.models import RosterRecord

    with session_scope(ctx.engine) as session:
        p = pool_rows.get_by_name(session=session, name=pool)
        record = rosters.for_pool(session=session, pool_id=p.id)
        rosters.upsert(session=session, record=RosterRecord(
            pool_id=p.id, document={**record.document, **changes}, sha256="broken", applied_at=ctx.clock.now(),
            actor="t"))


def failure_events(ctx):
    from controlplane.db import audit
    from controlplane.db.engine import session_scope

    with session_scope(ctx.engine) as session:
        return [(e.target, e.detail["error"]) for e in audit.list_recent(session=session, action="roster.failed")]


@pytest.mark.parametrize("broken", [{"holidays": ["2026-02-30"]}, {"timezone": "Mars/Olympus"},
                                    {"buffer": {"percent": float("nan")}}])
def test_one_bad_roster_never_stops_scaling_for_the_other_pools(ctx, clock, image, caplog, broken):
    if "buffer" in broken and ctx.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL refuses NaN in a JSON column: such a stored roster cannot exist there")
    for name in ("alpha", "beta"):  # alpha's roster is evaluated first
        pools.create(ctx, name=name, image="busybox-desktop", size=0, actor="t")
        scaling.apply(ctx, {f"{name}.yaml": SMALL.replace("pool: sales", f"pool: {name}")}, actor="t")
    break_stored_roster(ctx, "alpha", **broken)
    clock.t = datetime(2026, 11, 24, 7, 40, tzinfo=UTC)
    assert [pool for pool, _ in scaling.next_wakes(ctx, clock.now(), timedelta(hours=2))].count("beta") == 2
    clock.t = datetime(2026, 11, 24, 8, 10, tzinfo=UTC)
    with caplog.at_level("ERROR", logger="controlplane.services.scaling"):
        assert scaling.evaluate(ctx) == {"beta": (0, 4)}
        clock.advance(60)
        assert ShiftScheduler(ctx).evaluate() == {}  # the scheduler's wake-up goes through too
    assert pools.get(ctx, "alpha").target_size == 0  # keeps its size until its roster is fixed
    ((pool, error),) = failure_events(ctx)  # once, not at every wake-up
    assert pool == "alpha" and error
    assert len([r for r in caplog.records if "alpha" in r.getMessage()]) == 1
    with pytest.raises(Conflict, match="alpha"):
        scaling.plan(ctx, "alpha", clock.now())
