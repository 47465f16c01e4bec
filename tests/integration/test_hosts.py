"""Two real libvirt hosts: this machine's libvirtd, and a second one in its own network and mount
namespaces reached over TLS with certificates from ShiftDesk's local CA (second_host.py).

Placement spreads a pool over both; each desktop runs on its own host only (asked of each
libvirtd directly); maintenance moves the idle desktops of the second host to the first; the
second host admits only the control plane's certificate; when the second host dies (its
libvirtd, its host agent and its QEMUs killed at once), it is fenced once its agent's lease ran
out, and its desktops are recreated on the first. A desktop of the second host is reached only
through that host: its console through the host's console relay (its host channel and network:
test_agent_desktop.py).
"""

from __future__ import annotations

import shutil
import signal
import ssl
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx
import libvirt
import pytest

from controlplane.db import leases
from controlplane.db.engine import session_scope
from controlplane.domain.placement import HostMode
from controlplane.drivers.local_ca import ensure_libvirt_client
from controlplane.services import audit, desktops, hosts, pools
from controlplane.services.reconciler import Reconciler
from tests.integration.replicas import Replica, agent_token, first_update_through_gateway, wait_for
from tests.integration.second_host import (
    HOST_LEASE_TTL_S,
    SecondHost,
    second_host_with_agent,
)

SALES = "CN=cc-sales,OU=Groups,DC=hosts,DC=test"


@pytest.fixture
def host_b(real_settings) -> Iterator[SecondHost]:
    with second_host_with_agent(real_settings) as h:
        yield h


def running(uri: str, instance: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.name().startswith(f"sd-{instance}-")}
    finally:
        conn.close()


def by_host(ctx) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for d, _ in desktops.list_all(ctx):
        out.setdefault(d.host_id, set()).add(d.name)
    return out


def test_a_pool_spreads_over_two_real_hosts_and_maintenance_moves_it_off_one(real_ctx, real_settings, golden,
                                                                             host_b):
    b = hosts.register(real_ctx, name="host-b", uri=host_b.uri, actor="test")
    home, instance = real_ctx.host_id, real_settings.instance
    pools.create(real_ctx, name="agents", image="busybox-desktop", size=4, clone="cold", actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=300), "desktops did not become ready on two hosts"
        placed = by_host(real_ctx)
        assert sorted(len(names) for names in placed.values()) == [2, 2] and set(placed) == {home, b.id}
        assert running("qemu:///system", instance) == placed[home]  # each host runs its own, and only those
        assert running(host_b.uri, instance) == placed[b.id]
        # host-b's files (its desktops' serial logs, where they said ready) are on its own disk,
        # which the control plane does not see: read and cleared through host-b's agent
        assert {p.name for p in (host_b.root / "own" / "run").glob("*.serial")} == {f"{n}.serial"
                                                                                 for n in placed[b.id]}
        assert not list((real_settings.data_dir / "hosts" / "host-b").rglob("*.serial"))
        views = {v.name: v for v in hosts.views(real_ctx)}
        assert views["host-b"].state == "active" and views["host-b"].desktops == {"ready": 2}

        hosts.set_mode(real_ctx, name="host-b", mode=HostMode.MAINTENANCE, actor="test")
        assert rec.run_until_converged(timeout=300), "the idle desktops did not move off host-b"
        assert set(by_host(real_ctx)) == {home}
        assert running(host_b.uri, instance) == set()
        assert running("qemu:///system", instance) == by_host(real_ctx)[home]
        assert {str(d.state) for d, _ in desktops.list_all(real_ctx)} == {"ready"}

        pools.delete(real_ctx, "agents", actor="test")
        assert rec.run_until_converged(timeout=180)
    finally:
        rec.close()


def test_the_second_host_admits_only_the_control_planes_certificate(real_settings, host_b, tmp_path):
    conn = libvirt.open(host_b.uri)
    assert conn.getInfo()[2] >= 1
    conn.close()
    other = ensure_libvirt_client(real_settings.data_dir / "tls", tmp_path / "other", name="someone-else")
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(f"qemu+tls://10.254.2.2/system?pkipath={other}")
    (tmp_path / "nocert").mkdir()
    shutil.copyfile(other / "cacert.pem", tmp_path / "nocert" / "cacert.pem")
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(f"qemu+tls://10.254.2.2/system?pkipath={tmp_path / 'nocert'}")


def test_a_dead_host_is_fenced_and_its_desktops_are_recreated_on_the_other(real_ctx, real_settings, golden, host_b):
    real_ctx.limits = replace(real_ctx.limits, host_lease_ttl=timedelta(seconds=HOST_LEASE_TTL_S))
    b = hosts.register(real_ctx, name="host-b", uri=host_b.uri, actor="test")
    home, instance = real_ctx.host_id, real_settings.instance
    pools.create(real_ctx, name="agents", image="busybox-desktop", size=2, clone="cold", actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=300)
        lost = by_host(real_ctx)[b.id]
        assert len(lost) == 1 and audit.recent(real_ctx, action="host.fenced") == []
        with session_scope(real_ctx.engine) as session:
            assert leases.get(session=session, name="host:host-b") is not None, "the host agent keeps no lease"
        host_b.kill()  # libvirtd, the host agent and the desktop's QEMU: a power cut
        assert rec.run_until_converged(timeout=300, until=lambda: set(by_host(real_ctx)) == {home}), \
            "the dead host's desktop was not recreated on the other"
        assert len(by_host(real_ctx)[home]) == 2 and not lost & by_host(real_ctx)[home]
        assert running("qemu:///system", instance) == by_host(real_ctx)[home]
        assert {str(d.state) for d, _ in desktops.list_all(real_ctx)} == {"ready"}
        (fenced,) = audit.recent(real_ctx, action="host.fenced")
        assert fenced["target"] == "host-b"
        assert [e["target"] for e in audit.recent(real_ctx, action="desktop.evacuate")] == sorted(lost)
        pools.delete(real_ctx, "agents", actor="test")
        assert rec.run_until_converged(timeout=180)
    finally:
        rec.close()


def test_an_agent_works_on_a_desktop_of_the_second_host_through_another_replica_and_that_hosts_relay(
        real_ctx, real_settings, golden, host_b, tmp_path):
    """The desktop runs on the second host; the agent connects through a `shiftdesk serve` replica
    that did not place it. Its gateway reaches the desktop's VNC server only through the second
    host's console relay (mutual TLS), never by a path of its own."""
    b = hosts.register(real_ctx, name="host-b", uri=host_b.uri, actor="test")
    (home,) = [h.name for h in hosts.views(real_ctx) if h.name != "host-b"]
    hosts.set_mode(real_ctx, name=home, mode=HostMode.MAINTENANCE, actor="test")  # so the desktop goes to host-b
    pools.create(real_ctx, name="agents", image="busybox-desktop", size=1, clone="cold", groups=[SALES],
                 actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=300)
    finally:
        rec.close()
    (name,) = by_host(real_ctx)[b.id]
    assert running(host_b.uri, real_settings.instance) == {name}
    replica = Replica(real_settings, tmp_path / "replica.log", hostname="replica-b")
    try:
        replica.wait_up()
        token, ca = agent_token(real_ctx, "alice", [SALES]), real_settings.data_dir / "tls" / "ca.pem"
        connect = httpx.post(f"{replica.url}/api/v1/me/pools/agents/connect",
                             headers={"Authorization": f"Bearer {token}"},
                             verify=ssl.create_default_context(cafile=str(ca)), timeout=30)
        assert connect.status_code == 200, connect.text
        assert connect.json()["desktop"] == name
        width, height = first_update_through_gateway(replica, token, connect.json()["ticket"], ca)
        assert (width, height) != (0, 0)
        relayed = wait_for("the second host's relay to log the console", lambda: [
            line for line in (host_b.root / "agent.log").read_text().splitlines()
            if f"console: {name} vnc opened for shiftdesk-control-plane" in line], 10)
        assert len(relayed) == 1
    finally:
        replica.kill(signal.SIGTERM)
    pools.delete(real_ctx, "agents", actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=180)
    finally:
        rec.close()
