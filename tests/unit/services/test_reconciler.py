"""The reconciler against the fake hypervisor: convergence, failures, and crashes at every step."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.domain.desktop import DesktopState as S
from controlplane.drivers.fake import FakeHypervisor
from controlplane.errors import PermanentError, TemporaryError
from controlplane.services import desktops, pools
from controlplane.services.reconciler import Reconciler

CRASH_POINTS = [
    "provision.after-row", "provision.after-overlay", "provision.after-computer", "provision.after-define",
    "provision.after-start", "teardown.after-undefine", "teardown.after-overlay", "teardown.after-computer",
]


class Crash(BaseException):
    """Stands for kill -9: nothing after the crash point runs, nothing catches it."""


def crash_once_at(ctx, point):
    """Make CTX die at crash point POINT, the first time only; returns the points it died at."""
    crashed: list[str] = []

    def crash(name):
        if name == point and not crashed:
            crashed.append(name)
            raise Crash(name)

    ctx.crashpoint = crash
    return crashed


def states(ctx):
    return sorted(str(d.state) for d, _ in desktops.list_all(ctx))


def settle(ctx, passes=20):
    rec = Reconciler(ctx)
    try:
        for _ in range(passes):
            if not rec.pass_once().pending:
                return
        raise AssertionError("did not converge")
    finally:
        rec.close()


def one_ready_desktop(ctx):
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    (row, _), = desktops.list_all(ctx)
    return row


def assert_consistent(ctx, hv: FakeHypervisor):
    rows = {d.name for d, _ in desktops.list_all(ctx)}
    assert set(hv.domains) == rows, "domains and rows differ (orphan or missing)"
    assert set(hv.overlays) == rows, "overlays and rows differ (orphan or missing)"
    if ctx.directory is not None:
        assert ctx.directory.list_computers() == rows, "computer accounts and rows differ"


def test_pool_grows_and_shrinks(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"] * 3
    assert all(d.running for d in hv.domains.values())
    pools.scale(ctx, "sales", 1, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"]
    assert_consistent(ctx, hv)


def test_a_new_desktop_never_takes_a_name_already_used(ctx, hv, image, monkeypatch):
    """Names end in 24 random bits: among thousands a repeat comes up, and must cost a second
    draw, not a crashed step."""
    from controlplane.domain import naming

    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    (taken,) = [d.name for d, _ in desktops.list_all(ctx)]
    draws = iter([taken, "sd-unit-sales-00beef"])
    monkeypatch.setattr(naming, "desktop_name", lambda instance, pool, suffix=None: next(draws))
    pools.scale(ctx, "sales", 2, actor="t")
    rec = Reconciler(ctx)
    rec.pass_once()
    rec.close()
    assert sorted(d.name for d, _ in desktops.list_all(ctx)) == sorted([taken, "sd-unit-sales-00beef"])


def test_new_desktops_of_one_pass_never_share_a_name(ctx, hv, image, monkeypatch):
    """A pass writes its new rows in one transaction: a name drawn twice within it is drawn again
    too (the unique index would fail the whole batch)."""
    from controlplane.domain import naming

    draws = iter(["sd-unit-sales-000001", "sd-unit-sales-000001", "sd-unit-sales-000001", "sd-unit-sales-000002",
                  "sd-unit-sales-000003"])
    monkeypatch.setattr(naming, "desktop_name", lambda instance, pool, suffix=None: next(draws))
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    rec = Reconciler(ctx)
    rec.pass_once()
    rec.close()
    assert sorted(d.name for d, _ in desktops.list_all(ctx)) == [
        "sd-unit-sales-000001", "sd-unit-sales-000002", "sd-unit-sales-000003"]
    assert sorted(name for verb, name in hv.calls if verb == "define") == [
        "sd-unit-sales-000001", "sd-unit-sales-000002", "sd-unit-sales-000003"]


def test_a_batch_that_fails_backs_off_each_of_its_steps_and_writes_nothing(ctx, hv, image, clock, monkeypatch):
    """The new rows of a pass are one transaction: when it fails, no row, no domain, and the
    creations are tried again after the back-off, not at the pass rate."""
    from controlplane.db import audit as audit_repo

    def broken(**_kw):
        raise RuntimeError("simulated database error on the audit insert")

    pools.create(ctx, name="sales", image="busybox-desktop", size=2, clone="cold", actor="t")
    monkeypatch.setattr(audit_repo, "append_all", broken)
    rec = Reconciler(ctx)
    rec.pass_once()
    assert desktops.list_all(ctx) == [] and not any(verb == "define" for verb, _ in hv.calls)
    monkeypatch.undo()
    clock.advance(0.5)
    rec.pass_once()
    assert desktops.list_all(ctx) == [], "a failed batch was retried at the pass rate"
    clock.advance(ctx.limits.min_retry_delay.total_seconds())
    rec.pass_once()
    rec.close()
    assert len(desktops.list_all(ctx)) == 2


def test_pool_delete_removes_every_trace(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    settle(ctx)
    pools.delete(ctx, "sales", actor="t")
    settle(ctx)
    assert pools.list_all(ctx) == [] and hv.domains == {} and hv.overlays == {}


def test_running_twice_changes_nothing(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    settle(ctx)
    calls = len(hv.calls)
    settle(ctx)
    assert len(hv.calls) == calls


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_any_step_converges(ctx, hv, image, point):
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, clone="cold", actor="t")
    crashed = crash_once_at(ctx, point)
    with pytest.raises(Crash):
        for _ in range(20):
            settle(ctx, passes=20)
            pools.scale(ctx, "sales", 1, actor="t")  # reach teardown crash points too
    assert crashed == [point]
    settle(ctx)  # "restart": a fresh reconciler on the same world
    pools.scale(ctx, "sales", 2, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready", "ready"]
    assert_consistent(ctx, hv)


def test_boot_timeout_marks_failed_and_budget_stops_retrying(ctx, image, clock, settings):
    hv = FakeHypervisor(never_ready=frozenset())
    ctx.hypervisor = hv
    hv.never_ready = _AllNames()
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, clone="cold", actor="t")
    rec = Reconciler(ctx)
    for _ in range(6):
        rec.pass_once()
        clock.advance(ctx.limits.boot_timeout.total_seconds() * 2 / 3)
    rows = [d for d, _ in desktops.list_all(ctx)]
    failed = [d for d in rows if d.state == S.FAILED]
    budget = ctx.limits.failure_budget
    assert budget <= len(failed) < budget + 2 and len(rows) == len(failed)
    for _ in range(3):  # the budget is spent: no new attempts however long we wait
        rec.pass_once()
        clock.advance(ctx.limits.boot_timeout.total_seconds() * 2 / 3)
    rec.close()
    assert len(desktops.list_all(ctx)) == len(rows)
    assert all("not ready" in (d.reason or "") for d in failed)
    assert not any(hv.domains[d.name].running for d in failed)


class _AllNames(frozenset):
    def __contains__(self, _item):
        return True


def test_start_failure_marks_failed_with_reason(ctx, image):
    hv = FakeHypervisor()
    ctx.hypervisor = hv
    hv.fail_start = _AllNames()
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, clone="cold", actor="t")
    rec = Reconciler(ctx)
    rec.pass_once()
    rec.close()
    (row, _), *_ = desktops.list_all(ctx)
    assert row.state == S.FAILED and "simulated failure" in row.reason


def test_orphans_are_removed_and_missing_domains_repaired(ctx, hv, image):
    row = one_ready_desktop(ctx)
    hv.undefine(row.name)  # libvirt lost it
    from controlplane.domain.ports import BootImage, DesktopSpec

    stray = DesktopSpec(name="sd-unit-sales-ffffff", pool="nopool", desktop_id=99,
                        image=BootImage(disk=hv.root, kernel=hv.root, initrd=None, cmdline=""))
    hv.create_overlay(stray)
    hv.define(stray)
    settle(ctx)
    assert states(ctx) == ["ready"]
    assert_consistent(ctx, hv)
    with session_scope(ctx.engine) as session:
        actions = {e.action for e in audit.list_recent(session=session)}
    assert {"desktop.repair", "orphan.remove"} <= actions


def test_adopts_tagged_domain_when_database_lost_the_row(ctx, hv, image):
    row = one_ready_desktop(ctx)
    from sqlalchemy import text

    with session_scope(ctx.engine) as session:
        session.execute(text("DELETE FROM desktops"))
    settle(ctx)
    (again, _), = desktops.list_all(ctx)
    assert again.name == row.name and again.state == S.READY
    assert_consistent(ctx, hv)


def test_rebuild_recreates_from_pool_image(ctx, hv, image):
    row = one_ready_desktop(ctx)
    desktops.rebuild(ctx, row.name, actor="t")
    settle(ctx)
    (after, _), = desktops.list_all(ctx)
    assert after.name == row.name and after.generation == 2 and after.state == S.READY
    assert hv.domains[row.name].spec.generation == 2
    assert ("undefine", row.name) in hv.calls


def test_reboot_returns_to_ready(ctx, hv, image):
    row = one_ready_desktop(ctx)
    desktops.reboot(ctx, row.name, actor="t")
    assert desktops.get(ctx, row.name)[0].state == S.PROVISIONING
    settle(ctx)
    assert desktops.get(ctx, row.name)[0].state == S.READY


def test_single_desktop_delete_is_replaced(ctx, hv, image):
    row = one_ready_desktop(ctx)
    desktops.delete(ctx, row.name, actor="t")
    settle(ctx)
    (new, _), = desktops.list_all(ctx)
    assert new.name != row.name and new.state == S.READY and row.name not in hv.domains


def test_only_one_reconciler_holds_the_lease(ctx, image):
    a, b = Reconciler(ctx), Reconciler(ctx)
    assert a.hold_lease() and not b.hold_lease()
    a.release_lease()
    assert b.hold_lease()
    a.close(), b.close()


def test_lease_of_a_dead_local_process_is_taken_over_at_once(ctx, image):
    from controlplane.db import leases

    a, b = Reconciler(ctx), Reconciler(ctx)
    assert a.hold_lease()
    dead = subprocess_pid_that_exited()
    with session_scope(ctx.engine) as session:
        assert leases.take_over(session=session, name="reconciler", stale_holder=a.holder,
                                holder=f"{socket.gethostname()}:{dead}:x", now=ctx.clock.now(),
                                ttl=a.lease_ttl)
    assert b.hold_lease(), "a crashed holder on this host must not block for the whole TTL"
    assert not a.hold_lease()
    a.close(), b.close()


def subprocess_pid_that_exited() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_each_desktop_gets_a_computer_account_and_its_secret_once(ctx, hv, directory, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, clone="cold", actor="t")
    rec = Reconciler(ctx)
    rec.pass_once()  # create + provision: secrets handed to the domains
    names = {d.name for d, _ in desktops.list_all(ctx)}
    assert set(hv.join_secrets) == names == set(directory.computers)
    assert all(hv.join_secrets[n] == directory.computers[n] for n in names)
    rec.pass_once()  # ready: the host forgets the secrets
    rec.close()
    assert hv.join_secrets == {}
    assert_consistent(ctx, hv)


def test_lost_computer_account_recreates_an_idle_desktop(ctx, hv, directory, image):
    row = one_ready_desktop(ctx)
    directory.delete_computer(row.name)
    settle(ctx)
    assert desktops.get(ctx, row.name)[0].state == S.READY
    assert ("undefine", row.name) in hv.calls  # its old secret is dead: a fresh clone joins again
    assert_consistent(ctx, hv)


def test_orphan_computer_accounts_are_removed(ctx, hv, directory, image):
    directory.set_computer("sd-unit-sales-dead00")
    one_ready_desktop(ctx)
    assert "sd-unit-sales-dead00" not in directory.computers
    assert_consistent(ctx, hv)


def test_directory_down_postpones_but_does_not_wreck(ctx, hv, directory, image):
    row = one_ready_desktop(ctx)
    directory.down = True
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=0.5, busy_period=0.05) is False
    rec.close()
    directory.down = False
    assert desktops.get(ctx, row.name)[0].state == S.READY and row.name in hv.domains


# --- desktops whose domain vanished under a session (issue 8, item 2) -----------------------------


def claim(ctx, user="alice"):
    from controlplane.db import pools as pool_rows
    from controlplane.db import tickets

    with session_scope(ctx.engine) as session:
        pool = pool_rows.get_or_raise(session=session, name="sales")
        claimed = tickets.claim_ready(session=session, pool_id=pool.id, username=user, now=ctx.clock.now())
        return claimed.name if claimed else None


def audited(ctx, action):
    with session_scope(ctx.engine) as session:
        return [e for e in audit.list_recent(session=session, limit=1000) if e.action == action]


@pytest.mark.parametrize("state", [S.IN_USE, S.DRAINING])
def test_vanished_domain_under_a_session_is_recycled_and_the_agent_gets_a_fresh_desktop(ctx, hv, image, state):
    row = one_ready_desktop(ctx)
    assert claim(ctx) == row.name
    if state == S.DRAINING:
        from controlplane.db import desktops as desktop_rows

        with session_scope(ctx.engine) as session:
            desktop_rows.set_state(session=session, desktop=desktop_rows.get(session=session, desktop_id=row.id),
                                   state=S.DRAINING, now=ctx.clock.now())
    hv.undefine(row.name)  # libvirt lost the domain while the agent was on it
    settle(ctx)
    (fresh, _), = desktops.list_all(ctx)
    assert fresh.name != row.name, "the lost agent's disk must never be provisioned again for anyone"
    assert fresh.state == S.READY and fresh.assigned_to is None
    assert row.name not in hv.domains and row.name not in hv.overlays
    (event,) = audited(ctx, "desktop.recycle")
    assert event.target == row.name and event.detail["user"] == "alice" and "domain missing" in event.detail["reason"]
    assert claim(ctx) == fresh.name, "the agent gets a fresh desktop on reconnect"
    assert_consistent(ctx, hv)


def test_a_stopped_ready_desktop_is_not_handed_out_until_it_is_ready_again(ctx, hv, image):
    hv.boot_passes = 2
    row = one_ready_desktop(ctx)
    hv.destroy(row.name)  # powered off under an idle desktop
    rec = Reconciler(ctx)
    for _ in range(10):
        rec.pass_once()
        if desktops.get(ctx, row.name)[0].state == S.READY:
            break
        assert claim(ctx) is None, "a desktop that is not running (or still booting) is never handed out"
    rec.close()
    assert desktops.get(ctx, row.name)[0].state == S.READY and hv.domains[row.name].running
    assert ("start", row.name) in hv.calls[-6:]
    (event,) = audited(ctx, "desktop.repair")
    assert event.detail["reason"] == "domain was not running"
    assert claim(ctx) == row.name


# --- retries, permanent failures and the lease during a pass (issue 8, item 8) ---------------------


class StuckStart(FakeHypervisor):
    """Every start fails with a TemporaryError asking to retry in DELAY seconds (libvirtd busy)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        raise TemporaryError(f"start {name}: simulated busy libvirtd", delay=self.delay)


class UndeletableOverlay(FakeHypervisor):
    """Deleting any overlay fails for good (say, a volume someone locked by hand)."""

    def delete_overlay(self, name: str) -> None:
        self.calls.append(("delete_overlay", name))
        raise PermanentError(f"delete overlay {name}: simulated refusal")


def starts(hv) -> int:
    return sum(1 for verb, _ in hv.calls if verb == "start")


def test_a_temporary_error_is_retried_after_its_delay_with_back_off_per_desktop(ctx, image, clock):
    hv = ctx.hypervisor = StuckStart(delay=2.0)
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, clone="cold", actor="t")
    rec = Reconciler(ctx)
    attempts = []
    for _ in range(60):  # 15 s of passes at 4 Hz
        plan = rec.pass_once()
        assert plan.pending, "a desktop waiting to retry is not converged"
        attempts.append(starts(hv))
        clock.advance(0.25)
    rec.close()
    moments = [i * 0.25 for i, n in enumerate(attempts) if i == 0 or n > attempts[i - 1]]
    # the first attempt, then 2 s, 4 s and 8 s later: never at the pass rate
    assert moments == [0.0, 2.0, 6.0, 14.0], moments
    (row, _), = desktops.list_all(ctx)
    assert row.state == S.PROVISIONING and row.failures == 4
    assert row.retry_at == clock.now() - timedelta(seconds=1) + timedelta(seconds=16)


def test_temporary_errors_are_retried_and_a_success_ends_the_back_off(ctx, hv, image, clock):
    hv.flaky = 3
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    rec = Reconciler(ctx)
    for _ in range(40):
        if not rec.pass_once().pending:
            break
        clock.advance(1)
    rec.close()
    assert states(ctx) == ["ready", "ready"]
    assert all(d.failures == 0 and d.retry_at is None for d, _ in desktops.list_all(ctx))


def test_a_permanent_failure_is_recorded_on_the_desktop_and_audited_once(ctx, image, clock):
    hv = ctx.hypervisor = UndeletableOverlay()
    row = one_ready_desktop(ctx)
    desktops.delete(ctx, row.name, actor="t")
    rec = Reconciler(ctx)
    for _ in range(40):
        rec.pass_once()
        clock.advance(60)
    rec.close()
    stuck = desktops.get(ctx, row.name)[0]
    assert stuck.state == S.DELETING and "simulated refusal" in (stuck.reason or "")
    (event,) = audited(ctx, "desktop.step_failed")
    assert event.target == row.name and event.detail["step"] == "Teardown"
    tries = sum(1 for verb, name in hv.calls if verb == "delete_overlay" and name == row.name)
    assert 2 <= tries <= 40 * 60 / ctx.limits.max_retry_delay.total_seconds() + 1, tries


def test_a_permanent_failure_while_provisioning_fails_the_desktop_with_its_reason(ctx, image):
    hv = ctx.hypervisor = FakeHypervisor(fail_overlay=_AllNames())
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, clone="cold", actor="t")
    rec = Reconciler(ctx)
    for _ in range(5):
        rec.pass_once()
    rec.close()
    rows = [d for d, _ in desktops.list_all(ctx)]
    assert all(d.state == S.FAILED and "simulated failure" in d.reason for d in rows)
    assert len(audited(ctx, "desktop.failed")) == len(rows) and len(rows) <= ctx.limits.failure_budget
    assert hv.calls.count(("create_overlay", rows[0].name)) == 1


def elsewhere(call):
    """CALL's result, from another thread: what another process would do (outside this one's fence)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    thread.join()
    return out[0]


def test_a_long_pass_renews_its_lease_so_nobody_else_can_act(ctx, image, clock):
    ctx.parallelism = 1  # steps one after another: the pass outlives the lease's TTL
    a, b = Reconciler(ctx), Reconciler(ctx)
    pools.create(ctx, name="sales", image="busybox-desktop", size=4, actor="t")
    assert a.hold_lease()
    rivals = []

    def slow_step(point):
        if point == "provision.after-overlay":  # each desktop's own step (their rows are one batch)
            clock.advance(a.lease_ttl.total_seconds() * 0.6)
            rivals.append(elsewhere(b.hold_lease))

    ctx.crashpoint = slow_step
    a.pass_once()
    assert len(rivals) == 4 and not any(rivals), "the lease ran out in the middle of a pass"
    a.close(), b.close()


def test_a_reconciler_that_lost_its_lease_stops_acting(ctx, hv, image, clock):
    ctx.parallelism = 1
    a, b = Reconciler(ctx), Reconciler(ctx)
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    assert a.hold_lease()

    def stalled(point):  # the first desktop's step stalls past the TTL and another reconciler takes over
        if point == "provision.after-overlay" and not elsewhere(b.hold_lease):
            clock.advance(a.lease_ttl.total_seconds() + 1)
            assert elsewhere(b.hold_lease)

    ctx.crashpoint = stalled
    a.pass_once()
    assert len(desktops.list_all(ctx)) == 3  # their rows, in the one transaction before the stall
    assert sum(verb == "create_overlay" for verb, _ in hv.calls) == 1, "a reconciler without the lease went on acting"
    a.close(), b.close()


def test_a_delete_planned_from_a_stale_look_spares_a_desktop_its_agent_came_back_to(ctx, image, clock):
    """The plan saw the grace over; before the step ran, the agent reconnected (the hold renewed).
    The step decides from the row, in its own transaction: the desktop stays the agent's."""
    from controlplane.domain.planning import Delete
    from controlplane.services import broker
    from controlplane.services.tokens import Claims
    from tests.conftest import SALES

    pools.create(ctx, name="sales", image="busybox-desktop", size=1, groups=[SALES], actor="t")
    settle(ctx)
    ctx.directory = None
    alice = Claims("alice", "agent", (SALES,), "j", 0)
    first = broker.connect(ctx, alice, "sales")
    clock.advance(3600)  # the assignment's hold is long over
    rec = Reconciler(ctx)
    planned = rec.observe_and_plan().actions
    assert any(isinstance(a, Delete) for a in planned)
    assert broker.connect(ctx, alice, "sales").desktop == first.desktop  # back just in time
    rec._act(planned)
    rec.close()
    row, _ = desktops.get(ctx, first.desktop)
    assert row.state == S.IN_USE and row.assigned_to == "alice"


def test_a_batch_of_deletes_spares_only_the_desktop_its_agent_came_back_to(ctx, image, clock):
    """Deletes of one pass are one transaction; the agent who came back between the plan and the
    batch keeps their desktop (refused, backing off), the others are marked all the same."""
    from controlplane.domain.planning import Delete
    from controlplane.services import broker, provisioning
    from controlplane.services.tokens import Claims
    from tests.conftest import SALES

    pools.create(ctx, name="sales", image="busybox-desktop", size=3, groups=[SALES], actor="t")
    settle(ctx)
    ctx.directory = None
    agents = [Claims(user, "agent", (SALES,), "j", 0) for user in ("alice", "bob")]
    held = [broker.connect(ctx, agent, "sales").desktop for agent in agents]
    clock.advance(3600)  # both holds are long over
    rec = Reconciler(ctx)
    deletes = [a for a in rec.observe_and_plan().actions if isinstance(a, Delete)]
    assert len(deletes) == 2
    assert broker.connect(ctx, agents[0], "sales").desktop == held[0]  # alice is back just in time
    assert rec._perform_batch(provisioning.delete_many, deletes, frozenset()) == []
    rec.close()
    rows = {row.name: row for row, _ in desktops.list_all(ctx)}
    assert (rows[held[0]].state, rows[held[0]].failures) == (S.IN_USE, 1)
    assert (rows[held[1]].state, rows[held[1]].failures) == (S.DELETING, 0)


def test_a_writer_whose_lease_moved_on_commits_nothing_and_epochs_never_repeat(ctx, clock):
    from controlplane.db import leases
    from controlplane.db.engine import LeaseLost, fenced

    ttl = timedelta(seconds=15)
    with session_scope(ctx.engine) as session:
        first = leases.acquire(session=session, name="reconciler", holder="a", now=clock.now(), ttl=ttl)
        assert first
    with fenced("reconciler", first), session_scope(ctx.engine) as session:
        audit.append(session=session, actor="a", action="test.write", target="x")  # a holds it: written
    clock.advance(16)
    with session_scope(ctx.engine) as session:
        second = leases.acquire(session=session, name="reconciler", holder="b", now=clock.now(), ttl=ttl)
        assert second
    assert second == first + 1
    with pytest.raises(LeaseLost), fenced("reconciler", first), session_scope(ctx.engine) as session:
        audit.append(session=session, actor="a", action="test.write", target="y")  # a woke up too late
    with fenced("reconciler", first), session_scope(ctx.engine) as session:
        assert session.get(type(audit_row(ctx)), 1) is not None  # reading needs no token
    with session_scope(ctx.engine) as session:
        assert [e.target for e in audit.list_recent(session=session, action="test.write")] == ["x"]
        leases.release(session=session, name="reconciler", holder="b")
        assert leases.acquire(session=session, name="reconciler", holder="a", now=clock.now(), ttl=ttl) == second + 1


def audit_row(ctx):
    from controlplane.db.models import AuditEvent

    return AuditEvent(actor="", action="", target="")


def test_a_step_that_outlived_its_lease_cannot_write_once_another_reconciler_took_over(ctx, image, clock):
    ctx.parallelism = 1
    a, b = Reconciler(ctx), Reconciler(ctx)
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    assert a.hold_lease()

    def stalled(point):  # a checked its lease, then stalls mid-step; b takes over meanwhile
        if point == "provision.after-overlay":
            clock.advance(a.lease_ttl.total_seconds() + 1)
            assert elsewhere(b.hold_lease)

    ctx.crashpoint = stalled
    a.pass_once()
    ((row, _),) = desktops.list_all(ctx)
    assert row.disk_path is None, "a reconciler fenced off by a newer epoch still wrote"
    a.close(), b.close()
