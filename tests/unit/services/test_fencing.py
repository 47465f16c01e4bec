"""Fencing: a host agent keeps its host's lease or powers the host's desktops off; the control
plane gives a silent host's desktops up only once that lease ran out a further TTL ago, so no
desktop ever runs on two hosts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import create_engine

from controlplane.db import leases
from controlplane.db.engine import session_scope
from controlplane.domain.session import EndReason
from controlplane.services import audit, desktops, hosts, pools, sessions
from controlplane.services.host_agent import HostAgent, lease_name
from controlplane.services.reconciler import Reconciler
from tests.conftest import AGENTS, end_session, open_session
from tests.unit.services.test_reconciler import settle

TTL = timedelta(seconds=30)


def on(ctx, host_id):
    return {d.name: d for d, _ in desktops.list_all(ctx) if d.host_id == host_id}


def test_an_agent_that_cannot_keep_its_lease_powers_its_desktops_off_after_one_ttl(ctx, clock, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    agent = HostAgent(ctx.engine, "c", fakes["c"], clock, ttl=TTL)
    assert agent.beat()
    with session_scope(ctx.engine) as session:  # another holder: the lease cannot be renewed now
        leases.release(session=session, name=lease_name("c"), holder="c")
        leases.acquire(session=session, name=lease_name("c"), holder="someone", now=clock.now(), ttl=TTL * 10)
    clock.advance(29)
    assert not agent.beat() and not agent.fenced
    assert all(d.running for d in fakes["c"].domains.values())
    clock.advance(1)
    assert not agent.beat() and agent.fenced
    assert fakes["c"].domains and not any(d.running for d in fakes["c"].domains.values())


def test_an_agent_whose_database_is_gone_fences_its_host_too(ctx, clock, fleet, image, tmp_path):
    fakes, _ = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    agent = HostAgent(ctx.engine, "b", fakes["b"], clock, ttl=TTL)
    assert agent.beat()
    agent.engine = create_engine(f"sqlite:///{tmp_path}/missing/nothing.db")
    clock.advance(31)
    assert not agent.beat() and agent.fenced
    assert not any(d.running for d in fakes["b"].domains.values())
    agent.engine = ctx.engine
    assert agent.beat() and not agent.fenced


def test_a_silent_host_is_fenced_only_after_its_lease_ran_out_a_ttl_ago(ctx, clock, hv, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, groups=[AGENTS], actor="t")
    settle(ctx)
    live = open_session(ctx, "sales", user="alice")
    row, _ = desktops.get(ctx, live.desktop)
    name = next((n for n, i in ids.items() if i == row.host_id), None)
    if name is None:  # alice's desktop is on the control plane's own host: that one dies
        name, driver = next(h.name for h in hosts.views(ctx) if h.id == row.host_id), hv
    else:
        driver = fakes[name]
    agent = HostAgent(ctx.engine, name, driver, clock, ttl=ctx.limits.host_lease_ttl)
    assert agent.beat()
    driver.unreachable = True  # the host dies: no answer, no more renewals
    clock.advance(ctx.limits.host_lease_ttl.total_seconds() * 2 - 1)
    settle(ctx)
    assert set(on(ctx, row.host_id)) == {live.desktop} and on(ctx, row.host_id)[live.desktop].state == "in_use"
    clock.advance(2)
    sessions.heartbeat(ctx, live.display, limits=live.limits, period_s=2)  # the gateway's, every 2 s
    rec = Reconciler(ctx)
    for _ in range(10):
        rec.pass_once()
    rec.close()
    assert on(ctx, row.host_id)[live.desktop].state == "deleting"  # kept while its agent is told why
    assert sessions.heartbeat(ctx, live.display, limits=live.limits, period_s=2) == EndReason.HOST_FAILED
    end_session(ctx, live, EndReason.HOST_FAILED)
    clock.advance(5)
    settle(ctx)
    assert on(ctx, row.host_id) == {}
    assert len(desktops.list_all(ctx)) == 3  # replaced on the hosts that answer
    assert [e["target"] for e in audit.recent(ctx, action="host.fenced")] == [name]
    (evacuated,) = audit.recent(ctx, action="desktop.evacuate")
    assert evacuated["target"] == live.desktop and evacuated["detail"]["user"] == "alice"
    (view,) = [v for v in hosts.views(ctx) if v.name == name]
    assert view.state == "down"

    driver.unreachable = False  # it comes back with what it had: removed, never used again
    assert driver.domains
    settle(ctx)
    assert not driver.domains and not driver.overlays
    assert [e["target"] for e in audit.recent(ctx, action="host.recovered")] == [name]


def test_a_host_without_an_agent_is_never_fenced(ctx, clock, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    fakes["b"].unreachable = True
    clock.advance(3600)
    settle(ctx)
    assert len(on(ctx, ids["b"])) == 1 and audit.recent(ctx, action="host.fenced") == []


def test_a_host_whose_libvirt_answers_without_its_agent_is_never_fenced(ctx, clock, fleet, image):
    """Its agent keeps its files and its lease; with the agent gone the lease runs out, but the
    desktops may still run there: the host is down (nothing new goes there), never given up."""
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    agent = HostAgent(ctx.engine, "b", fakes["b"], clock, ttl=ctx.limits.host_lease_ttl)
    assert agent.beat()
    before = set(on(ctx, ids["b"]))
    fakes["b"].agent_unreachable = True  # the agent died; libvirtd and the desktops did not
    clock.advance(ctx.limits.host_lease_ttl.total_seconds() * 3)
    settle(ctx)
    assert set(on(ctx, ids["b"])) == before and audit.recent(ctx, action="host.fenced") == []
    assert all(d.running for d in fakes["b"].domains.values())
    (view,) = [v for v in hosts.views(ctx) if v.name == "b"]
    assert view.state == "active"  # libvirt answers: its capacity is known

    fakes["b"].unreachable = True  # and now the host dies too: fenced as any silent host
    clock.advance(1)
    settle(ctx)
    assert [e["target"] for e in audit.recent(ctx, action="host.fenced")] == ["b"]
