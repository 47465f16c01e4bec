"""Two real libvirt hosts: this machine's libvirtd, and a second one in its own network and mount
namespaces reached over TLS with certificates from ShiftDesk's local CA (second_host.py).

Placement spreads a pool over both; each desktop runs on its own host only (asked of each
libvirtd directly); maintenance moves the idle desktops of the second host to the first; the
second host admits only the control plane's certificate; when the second host dies (its
libvirtd, its host agent and its QEMUs killed at once), it is fenced once its agent's lease ran
out, and its desktops are recreated on the first. A desktop of the second host is reached only
through that host: its console and its host channel through the host's console relay, its
network on the host's own bridge, DHCP server and resolver, which the host's agent runs.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import httpx
import libvirt
import pytest

from controlplane.config import NetworkSettings
from controlplane.db import leases
from controlplane.db.engine import session_scope
from controlplane.domain.placement import HostMode
from controlplane.drivers.local_ca import ensure_libvirt_client
from controlplane.main import build_context
from controlplane.services import audit, desktops, hosts, images, policies, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import database_env
from tests.integration.conftest import purge
from tests.integration.replicas import Replica, agent_token, first_update_through_gateway, wait_for
from tests.integration.second_host import ADDRESS, NS, SecondHost, agent_command, second_host

LEASE_TTL_S = 6  # the host agent's; short, so the test waits seconds for fencing, not minutes
SALES = "CN=cc-sales,OU=Groups,DC=hosts,DC=test"


@contextlib.contextmanager
def second_host_with_agent(settings, **env: str) -> Iterator[SecondHost]:
    """The second host, with its host agent running beside its libvirtd (on SETTINGS' database,
    with ENV added to its environment)."""
    root = Path(tempfile.mkdtemp(prefix="shiftdesk-host2-", dir="/var/tmp"))
    env = {"SHIFTDESK_DATA_DIR": str(settings.data_dir), "SHIFTDESK_INSTANCE": settings.instance,
           "SHIFTDESK_LIBVIRT__URI": "qemu:///system", "SHIFTDESK_RECONCILER__HOST_LEASE_TTL_S": str(LEASE_TTL_S),
           # its consoles, relayed over TLS with the host's own certificate (the one its libvirtd has)
           "SHIFTDESK_CONSOLE__LISTEN": ADDRESS, "SHIFTDESK_CONSOLE__PKI_DIR": str(root / "pki"),
           **database_env(settings), **env}
    try:
        with second_host(root, settings.data_dir / "tls", agent_command("host-b", env, root / "agent.log")) as h:
            yield h
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
    real_ctx.limits = replace(real_ctx.limits, host_lease_ttl=timedelta(seconds=LEASE_TTL_S))
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


@pytest.mark.timeout(1500)
def test_an_agent_desktop_of_the_second_host_gets_its_network_and_its_app_allowlist_there(real_settings):
    """Desktop networks on, an agent desktop placed on the second host. The control plane assigns
    its address; the second host's agent admits it on that host's own bridge, firewall and DHCP
    server and runs its resolver there, and the guest leases its address from that DHCP server,
    never from the first host's. Its host channel is a socket of the second host: the control plane
    reaches it only through that host's console relay, sends the desktop its identity and its
    signed app allowlist there, and the desktop is ready only once the guest confirmed both."""
    subnet = IPv4Network(f"10.236.{secrets.randbelow(200) + 20}.0/24")
    settings = real_settings.model_copy(update={"network": NetworkSettings(enabled=True, subnet=subnet)})
    ctx = build_context(settings)
    try:
        with second_host_with_agent(settings, SHIFTDESK_NETWORK__ENABLED="true",
                                    SHIFTDESK_NETWORK__SUBNET=str(subnet)) as b_host:
            images.build(ctx, "agent-desktop", actor="test")
            policies.apply(ctx, {"agents.yaml": f'name: agents\nbind:\n  groups: ["{SALES}"]\n  pools: [agents]\n'
                                                'apps:\n  allow: [firefox-esr]\n'}, actor="test")
            b = hosts.register(ctx, name="host-b", uri=b_host.uri, actor="test")
            (home,) = [h.name for h in hosts.views(ctx) if h.name != "host-b"]
            hosts.set_mode(ctx, name=home, mode=HostMode.MAINTENANCE, actor="test")
            pools.create(ctx, name="agents", image="agent-desktop", size=1, clone="cold", actor="test")
            rec = Reconciler(ctx)
            try:
                assert rec.run_until_converged(timeout=1200), "the agent desktop on host-b never became ready"
                # a guest that does not apply its allowlist in time is failed and replaced (under a
                # loaded CI its enforcer can time out): the ready one is the pool's desktop
                (row,) = [r for r, _ in desktops.list_all(ctx) if str(r.state) == "ready"]
                assert row.host_id == b.id and row.ipv4 is not None
                state = ctx.driver(b.id).links.state(row.name)
                assert state.confirmed and state.apps_applied is not None  # its identity, then its allowlist
                assert audit.recent(ctx, action="app.denied") == []  # firefox, allowed, ran
                log = (b_host.root / "agent.log").read_text()
                assert f"console: {row.name} channel opened for shiftdesk-control-plane" in log

                net = ctx.network.network
                nic = net.nic(row.name, IPv4Address(row.ipv4))
                there = b_host.root / "run-shiftdesk" / settings.instance / "net" / "dhcp" / "leases"
                wait_for(f"{row.name} to lease {nic.ipv4} from the second host", lambda: f"{nic.mac} {nic.ipv4}" in (
                    there.read_text() if there.exists() else ""), 120, every=1)
                here = ctx.network.state_dir / "dhcp" / "leases"
                assert nic.mac not in (here.read_text() if here.exists() else "")  # not the first host's
                fdb = subprocess.run(["ip", "netns", "exec", NS, "bridge", "fdb", "show", "br", net.bridge],
                                     capture_output=True, text=True, check=True).stdout
                assert f"{nic.mac} dev {nic.tap}" in fdb  # it sends with its own MAC on its own port there
                listening = subprocess.run(["ip", "netns", "exec", NS, "ss", "-lnu"], capture_output=True,
                                           text=True, check=True).stdout
                assert f"{net.host}:53 " in listening  # the second host's resolver serves it
                pools.delete(ctx, "agents", actor="test")
                assert rec.run_until_converged(timeout=180)
            finally:
                rec.close()
    finally:
        purge(settings)
        ctx.network.remove()
        shutil.rmtree(Path("/run/shiftdesk") / settings.instance, ignore_errors=True)
