"""Many hosts against fake hypervisors: registration, placement, maintenance, a host that stops
answering. Each desktop lives on one host, and every step on it goes to that host's hypervisor."""

from __future__ import annotations

import pytest

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.domain.placement import HostMode
from controlplane.errors import Conflict, InvalidInput
from controlplane.services import broker, desktops, hosts, pools
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import AGENTS, SALES
from tests.unit.services.test_reconciler import settle


def placed(ctx) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for d, _ in desktops.list_all(ctx):
        out.setdefault(d.host_id, []).append(str(d.state))
    return out


def assert_each_desktop_on_its_host_only(ctx, hv, fakes, ids):
    drivers = {ctx.host_id: hv, **{ids[n]: fake for n, fake in fakes.items()}}
    for host_id, driver in drivers.items():
        rows = {d.name for d, _ in desktops.list_all(ctx) if d.host_id == host_id}
        assert set(driver.domains) == rows and set(driver.overlays) == rows, f"host {host_id}"


def test_registering_a_host_checks_every_field_and_is_audited(ctx, fleet):
    before = hosts.views(ctx)
    for kwargs, field in [({"name": "Bad Name", "uri": "fake://x"}, "name"),
                          ({"name": "d", "uri": "http://x"}, "uri"),
                          ({"name": "d", "uri": "qemu+tls://h d/system"}, "uri")]:
        with pytest.raises(InvalidInput) as err:
            hosts.register(ctx, actor="admin", **kwargs)
        assert err.value.field == field
    with pytest.raises(Conflict) as err:
        hosts.register(ctx, name="b", uri="fake://other", actor="admin")
    assert err.value.field == "name"
    with pytest.raises(Conflict) as err:
        hosts.register(ctx, name="d", uri="fake://b", actor="admin")
    assert err.value.field == "uri"
    assert hosts.views(ctx) == before
    with session_scope(ctx.engine) as session:
        events = [(e.action, e.target) for e in audit.list_recent(session=session, action="host.register")]
    assert sorted(events) == [("host.register", "b"), ("host.register", "c")]


def test_a_replica_cannot_register_its_hosts_libvirt_again_under_another_name(ctx, settings):
    """A second control plane whose hostname differs but whose libvirt is the same host's must not
    make that host a second row (each row's desktops would be the other's orphans)."""
    before = [h.name for h in hosts.views(ctx)]
    with pytest.raises(InvalidInput) as err:
        hosts.ensure(ctx.engine, name="replica-b", uri=settings.libvirt.uri)
    assert err.value.field == "libvirt.host_name" and f"SHIFTDESK_LIBVIRT__HOST_NAME={before[0]}" in str(err.value)
    assert [h.name for h in hosts.views(ctx)] == before
    assert hosts.ensure(ctx.engine, name=before[0], uri=settings.libvirt.uri) == ctx.host_id


def test_a_pool_spreads_across_hosts_and_each_step_goes_to_the_desktops_host(ctx, hv, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=6, groups=[SALES], actor="t")
    settle(ctx)
    assert {h: len(s) for h, s in placed(ctx).items()} == {ctx.host_id: 2, ids["b"]: 2, ids["c"]: 2}
    assert_each_desktop_on_its_host_only(ctx, hv, fakes, ids)
    connection = broker.connect(ctx, Claims("alice", "agent", (AGENTS, SALES), "j", 0), "sales")
    target = broker.redeem(ctx, connection.ticket, "alice")
    row, _ = desktops.get(ctx, target.desktop)
    assert target.host_id == row.host_id  # the gateway dials the desktop through its own host
    assert ctx.driver(target.host_id).domains[target.desktop].running
    pools.scale(ctx, "sales", 0, actor="t")
    settle(ctx)
    assert_each_desktop_on_its_host_only(ctx, hv, fakes, ids)
    assert [d.name for d, _ in desktops.list_all(ctx)] == [target.desktop]  # alice's, until her session ends


def test_a_host_without_the_pools_golden_image_takes_none_of_its_desktops_and_says_why(ctx, hv, fleet, image):
    fakes, ids = fleet
    fakes["b"].images = frozenset({image.sha256})  # host c's image store lacks it (the operator's copy)
    fakes["c"].images = frozenset()
    pools.create(ctx, name="sales", image="busybox-desktop", size=4, actor="t")
    settle(ctx)
    assert {h: len(s) for h, s in placed(ctx).items()} == {ctx.host_id: 2, ids["b"]: 2}
    assert not fakes["c"].domains
    own = next(h.name for h in hosts.views(ctx) if h.id == ctx.host_id)
    hosts.set_mode(ctx, name=own, mode=HostMode.MAINTENANCE, actor="admin")
    hosts.set_mode(ctx, name="b", mode=HostMode.MAINTENANCE, actor="admin")
    pools.scale(ctx, "sales", 5, actor="t")
    settle(ctx)
    (view,) = pools.views(ctx, "sales")
    assert view.unplaceable is not None and "c: image: the pool's golden image (sha256 " in view.unplaceable


def test_a_host_in_maintenance_takes_nothing_new_and_its_idle_desktops_move_away(ctx, hv, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    hosts.set_mode(ctx, name="b", mode=HostMode.MAINTENANCE, actor="admin")
    settle(ctx)
    assert ids["b"] not in placed(ctx) and sum(len(s) for s in placed(ctx).values()) == 3
    assert all(s == ["ready"] * len(s) for s in placed(ctx).values())
    assert not fakes["b"].domains and not fakes["b"].overlays
    pools.scale(ctx, "sales", 5, actor="t")
    settle(ctx)
    assert ids["b"] not in placed(ctx)
    (view,) = [v for v in hosts.views(ctx) if v.name == "b"]
    assert view.mode == HostMode.MAINTENANCE and view.desktops == {}
    with session_scope(ctx.engine) as session:
        assert [e.target for e in audit.list_recent(session=session, action="host.maintenance")] == ["b"]


def test_a_host_that_stops_answering_keeps_its_desktops_and_the_others_go_on(ctx, hv, fleet, image):
    fakes, ids = fleet
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    fakes["c"].unreachable = True
    pools.scale(ctx, "sales", 5, actor="t")
    settle(ctx)
    by_host = placed(ctx)
    assert by_host[ids["c"]] == ["ready"]  # not given up: it may still run there (only fencing may)
    assert len(by_host[ctx.host_id]) + len(by_host[ids["b"]]) == 4
    (view,) = [v for v in hosts.views(ctx) if v.name == "c"]
    assert view.state == "down" and "not answering" in (view.reason or "")
    fakes["c"].unreachable = False
    settle(ctx)
    assert_each_desktop_on_its_host_only(ctx, hv, fakes, ids)


@pytest.mark.timeout(60)
def test_the_hosts_view_does_not_wait_for_hosts_that_hang(ctx, hv, fleet, monkeypatch):
    """A dead host holds a call until keepalive gives up: the view asks every host at once, and
    shows the ones that did not answer in time as down, saying so (two hanging hosts asked one
    after the other would hold it until they answer: here, never)."""
    fakes, _ = fleet
    monkeypatch.setattr(hosts, "ANSWER_S", 0.2)
    fakes["b"].hang.clear()
    fakes["c"].hang.clear()
    try:
        got = {v.name: (str(v.state), v.reason) for v in hosts.views(ctx)}
    finally:
        fakes["b"].hang.set()
        fakes["c"].hang.set()
    assert got["b"] == got["c"] == ("down", "its hypervisor did not answer within 0.2 s")
    own = next(v for v in hosts.views(ctx) if v.id == ctx.host_id)
    assert own.state == "active" and own.capacity == hv.host


@pytest.mark.timeout(60)
def test_a_host_that_hangs_never_keeps_the_process_from_exiting_and_holds_one_thread(ctx, fleet, monkeypatch):
    """`shiftdesk host ls` printed its view after 3 s, then waited at exit for the hung call (a
    worker of a thread pool is joined at exit). Asks run in daemon threads now, and a host whose
    ask is still under way is not asked again: views every few seconds hold one thread for it."""
    import threading

    fakes, _ = fleet
    monkeypatch.setattr(hosts, "ANSWER_S", 0.1)
    fakes["b"].hang.clear()
    try:
        for _ in range(3):
            assert {v.name: str(v.state) for v in hosts.views(ctx)}["b"] == "down"
        asking = [t for t in threading.enumerate() if t.name.startswith("host-view") and t.is_alive()]
        assert asking and all(t.daemon for t in asking), "a hung ask would hold the process at exit"
        assert len(asking) == 1, [t.name for t in asking]
    finally:
        fakes["b"].hang.set()


def test_no_host_answering_postpones_the_pass(ctx, hv, fleet, image):
    fakes, _ = fleet
    hv.unreachable = fakes["b"].unreachable = fakes["c"].unreachable = True
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    rec = Reconciler(ctx)
    try:
        with pytest.raises(Exception, match="no host answers"):
            rec.pass_once()
    finally:
        rec.close()
    assert desktops.list_all(ctx) == []


def test_a_pool_no_host_can_take_says_why_on_the_pool_and_once_in_the_audit_log(ctx, hv, fleet, image):
    fakes, _ = fleet
    own = next(h.name for h in hosts.views(ctx) if h.id == ctx.host_id)
    for name in (own, "b"):
        hosts.set_mode(ctx, name=name, mode=HostMode.MAINTENANCE, actor="admin")
    fakes["c"].unreachable = True
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    rec = Reconciler(ctx)
    try:
        for _ in range(3):
            rec.pass_once()
    finally:
        rec.close()
    (view,) = pools.views(ctx, "sales")
    assert view.unplaceable is not None and view.unplaceable.startswith("pool sales: no host can take a desktop")
    assert f"{own}: in maintenance; b: in maintenance; c: down (" in view.unplaceable
    with session_scope(ctx.engine) as session:
        assert len(audit.list_recent(session=session, action="pool.unplaceable")) == 1
    hosts.set_mode(ctx, name="b", mode=HostMode.ACTIVE, actor="admin")
    settle(ctx)
    (view,) = pools.views(ctx, "sales")
    assert view.unplaceable is None and view.desktops == {"ready": 2}



def test_a_guest_on_any_host_wakes_the_reconciler(ctx, hv, fleet):
    """Every host's hypervisor wakes the pass loop when a guest's readiness changes: the control
    plane's own, a host opened before the reconciler started and one opened after."""
    fakes, ids = fleet
    ctx.driver(ids["b"])  # opened before
    rec = Reconciler(ctx)
    ctx.driver(ids["c"])  # opened after
    for driver in (hv, fakes["b"], fakes["c"]):
        rec.wake.clear()
        assert driver.on_change is not None
        driver.on_change()
        assert rec.wake.is_set()
