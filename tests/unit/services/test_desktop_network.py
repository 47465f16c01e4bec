"""Desktop networking through the reconciler, on the fake hypervisor and host network: each
desktop gets its own address (and so MAC and port), is admitted before its NIC exists, and the
host admits exactly the desktops that exist, whatever crashed in between."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from controlplane.domain import network
from controlplane.domain.network import DesktopNetwork
from controlplane.domain.placement import HostMode
from controlplane.drivers.fake import FakeHostNetwork, FakeHypervisor
from controlplane.services import desktops, hosts, pools
from controlplane.services.host_agent import HostAgent
from controlplane.services.reconciler import Reconciler
from tests.unit.services.test_reconciler import Crash, assert_consistent, crash_once_at, settle, states


@pytest.fixture
def net(ctx, hv) -> FakeHostNetwork:
    ctx.directory = None  # busybox clones: no join secret to hand over
    ctx.network = FakeHostNetwork(DesktopNetwork.of("unit", IPv4Network("10.77.0.0/16")), calls=hv.calls)
    return ctx.network


def nics(hv):
    return {name: dom.spec.nic for name, dom in hv.domains.items()}


@pytest.mark.parametrize("clone", ["instant", "cold"])
def test_each_desktop_gets_its_own_address_and_is_admitted_before_it_is_made(ctx, hv, net, image, clone):
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, clone=clone, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"] * 3
    given = nics(hv)
    assert all(nic is not None for nic in given.values())
    assert len({nic.ipv4 for nic in given.values()}) == 3 and len({nic.mac for nic in given.values()}) == 3
    assert len({nic.tap for nic in given.values()}) == 3
    assert {nic.ipv4 for nic in given.values()} == {IPv4Address(f"10.77.0.{i}") for i in (10, 11, 12)}
    assert net.admitted == given
    made = "restore_clone" if clone == "instant" else "define"
    for name in given:
        assert hv.calls.index(("admit", name)) < hv.calls.index((made, name))


def test_templates_have_no_nic(ctx, hv, net, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    assert hv.templates == {} and hv.saved  # saved: the only thing a clone copies is NIC-less memory
    assert all(nic.name in hv.domains for nic in net.admitted.values())


def test_a_removed_desktop_is_no_longer_admitted_and_its_address_is_reused(ctx, hv, net, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    settle(ctx)
    first = {nic.ipv4: name for name, nic in nics(hv).items()}
    gone = first[IPv4Address("10.77.0.10")]
    desktops.delete(ctx, gone, actor="admin")
    pools.scale(ctx, "sales", 1, actor="t")
    settle(ctx)
    assert gone not in net.admitted and set(net.admitted) == set(hv.domains)
    pools.scale(ctx, "sales", 2, actor="t")
    settle(ctx)
    addresses = sorted(nic.ipv4 for nic in net.admitted.values())
    assert addresses == [IPv4Address("10.77.0.10"), IPv4Address("10.77.0.11")]
    assert gone not in net.admitted


@pytest.mark.parametrize("point", ["provision.after-row", "provision.after-restore", "provision.after-overlay"])
def test_a_crash_anywhere_converges_to_one_admitted_port_per_desktop(ctx, hv, net, image, point):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2,
                 clone="cold" if point == "provision.after-overlay" else "instant", actor="t")
    crashed = crash_once_at(ctx, point)
    with pytest.raises(Crash):
        settle(ctx)
    assert crashed == [point]
    settle(ctx)
    assert states(ctx) == ["ready", "ready"]
    assert_consistent(ctx, hv)
    assert net.admitted == nics(hv)
    assert len({nic.ipv4 for nic in net.admitted.values()}) == 2


def test_a_host_network_that_fails_to_sync_is_tried_again_next_pass(ctx, hv, net, image):
    net.fail_next = 1
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"] and net.syncs >= 1 and net.admitted == nics(hv)


def test_a_full_subnet_fails_the_desktop_with_the_setting_named(ctx, hv, image, monkeypatch):
    monkeypatch.setattr(network, "FIRST_HOST_OFFSET", 253)  # a /24 with two desktop addresses: .253, .254
    ctx.directory = None
    ctx.network = FakeHostNetwork(DesktopNetwork.of("unit", IPv4Network("10.78.0.0/24")), calls=hv.calls)
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    rec = Reconciler(ctx)
    try:
        for _ in range(4):
            rec.pass_once()
    finally:
        rec.close()
    rows = [d for d, _ in desktops.list_all(ctx)]
    assert sorted(d.ipv4 for d in rows if d.state == "ready") == ["10.78.0.253", "10.78.0.254"]
    failed = [d for d in rows if d.state == "failed"]
    assert failed and all("network.subnet" in (d.reason or "") and d.ipv4 is None for d in failed)
    assert all(dom.spec.nic is not None for dom in hv.domains.values())


def test_desktops_of_another_host_get_addresses_there_and_that_hosts_agent_admits_them(ctx, hv, net, fleet, image,
                                                                                     clock):
    """Addresses are per host; the control plane's own network never admits another host's
    desktop; the other host's agent does, every few seconds, on that host's own network."""
    fakes, ids = fleet
    own = [h.name for h in hosts.views(ctx) if h.id == ctx.host_id][0]
    hosts.set_mode(ctx, name=own, mode=HostMode.MAINTENANCE, actor="admin")
    hosts.set_mode(ctx, name="c", mode=HostMode.MAINTENANCE, actor="admin")
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, clone="cold", actor="t")
    settle(ctx)
    given = nics(fakes["b"])
    assert len(given) == 2 and all(nic is not None for nic in given.values())
    assert {nic.ipv4 for nic in given.values()} == {IPv4Address("10.77.0.10"), IPv4Address("10.77.0.11")}
    assert net.admitted == {}  # not on the control plane's host: its ports are not there
    assert not any(call == "admit" for call, _ in hv.calls)

    there = FakeHostNetwork(net.network)
    started: list[int] = []
    agent = HostAgent(ctx.engine, "b", fakes["b"], clock, network=there, on_registered=started.append)
    agent.sync_network()
    agent.sync_network()
    assert there.admitted == given and started == [ids["b"]]  # the resolver starts once

    desktops.delete(ctx, sorted(given)[0], actor="admin")
    pools.scale(ctx, "sales", 1, actor="t")
    settle(ctx)
    agent.sync_network()
    assert set(there.admitted) == set(nics(fakes["b"])) and len(there.admitted) == 1


def test_a_host_agent_admits_nothing_before_its_host_is_registered(ctx, clock, net):
    there = FakeHostNetwork(net.network)
    started: list[int] = []
    agent = HostAgent(ctx.engine, "d", FakeHypervisor(), clock, network=there, on_registered=started.append)
    agent.sync_network()
    assert there.syncs == 0 and started == []
    registered = hosts.register(ctx, name="d", uri="fake://d", actor="admin")
    agent.sync_network()
    assert there.syncs == 1 and there.admitted == {} and started == [registered.id]
