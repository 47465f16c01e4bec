"""Egress for real: a small internet in a network namespace (an upstream DNS server, a CRM web
server, a second web server on an address no allowed name leads to, a QUIC-like UDP listener and
a DNS-over-TLS port), the host's desktop network with its nftables tables, the enforcing resolver
on port 53 of the host, and a desktop namespace plugged into the bridge like a desktop's NIC.

The desktop reaches exactly what the signed-in agent's policy allows; each bypass fails and
refusals are audited; a policy apply closes and opens names within seconds, cutting the
connections it forbids."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from sqlmodel import select

from bench.netlab import CRM, ELSEWHERE, SHARED, FakeDesktop, Internet, purge
from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.egress import RefusalCounter
from controlplane.domain.network import DesktopNetwork
from controlplane.drivers.netfilter.egress import NftEgressFirewall
from controlplane.drivers.netfilter.host_network import LinuxHostNetwork, host_addresses
from controlplane.drivers.netfilter.proxy import SquidProxy
from controlplane.drivers.netfilter.ruleset import table_name
from controlplane.resolver.core import EgressResolver, Upstream
from controlplane.resolver.server import ProxyFiles, ResolverService
from controlplane.services import policies, pools
from tests.conftest import SALES


def policy(domains: list[str]) -> dict[str, str]:
    allow = "".join(f"\n    - \"{d}\"" for d in domains) or " []"
    return {"floor.yaml": f"""
name: floor
bind:
  groups: ["{SALES}"]
  pools: [floor]
domains:
  allow:{allow}
"""}


@pytest.fixture
def floor(ctx, image) -> Iterator[tuple[FakeDesktop, Internet, object]]:
    for tool in ("nft", "dnsmasq", "conntrack"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup-host.sh installs it"
    tag = "eg" + secrets.token_hex(3)
    net = DesktopNetwork.of(tag, IPv4Network(f"10.233.{secrets.randbelow(200) + 20}.0/24"))
    state = Path("/run/shiftdesk") / tag / "net"
    inet = Internet(tag)
    host = LinuxHostNetwork(tag, net, state, proxy=SquidProxy(net, state, [inet.far_side]))
    desk = FakeDesktop(f"{tag}-d0", net.nic(f"sd-{tag}-floor-000001", net.first))
    service = None
    try:
        inet.start()
        host.sync([desk.nic])
        desk.plug(net, default_route=True)
        service = start_resolver(ctx, image, tag, net, desk, inet, host.proxy)
        yield desk, inet, ctx
    finally:
        if service is not None:
            service.stop()
        desk.unplug()
        inet.stop()
        host.remove()
        purge(tag)


def start_resolver(ctx, image, tag: str, net: DesktopNetwork, desk: FakeDesktop, inet: Internet,
                   proxy: SquidProxy) -> ResolverService:
    """Alice (sales) signed in to DESK of pool floor; the resolver on the host's port 53."""
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, policy(["crm.example.com", "*.example.com"]), actor="admin")
    with session_scope(ctx.engine) as session:
        pool = session.exec(select(Pool).where(Pool.name == "floor")).one()
        session.add(Desktop(name=desk.nic.name, pool_id=pool.id, host_id=ctx.host_id, image_id=image.id,
                            state="in_use", assigned_to="alice", assigned_groups=[SALES], ipv4=str(desk.nic.ipv4)))
    resolver = EgressResolver(NftEgressFirewall(tag), [Upstream(inet.far_side)],
                              [net.subnet, *host_addresses()], RefusalCounter())
    service = ResolverService(ctx, resolver, net.host, refresh_s=0.2, audit_s=0.5,
                              proxy=ProxyFiles(proxy.allowlists_file, proxy.refusals_file))
    service.start()
    assert service.ready.wait(10), "the resolver did not start"
    return service


def audited(ctx, name: str, what: str) -> None:
    """Wait (5 s at most) for the refusal of NAME in the audit log (written every half second here)."""
    deadline = time.monotonic() + 5
    while True:
        with session_scope(ctx.engine) as session:
            events = audit.list_recent(session=session, limit=500, action="egress.refused")
            if any(e.detail["name"] == name for e in events):
                return
        assert time.monotonic() < deadline, f"{what} was never audited"
        time.sleep(0.2)


def test_the_agent_reaches_the_crm_and_nothing_else(floor):
    desk, inet, ctx = floor
    assert "<h1>CRM</h1>" in desk.fetch("http://crm.example.com/")
    assert desk.lookup("tracker.example.net").startswith("ERROR")
    audited(ctx, "tracker.example.net", "the refusal")
    with session_scope(ctx.engine) as session:
        event = next(e for e in audit.list_recent(session=session, limit=50) if e.action == "egress.refused")
    assert event.actor == "alice" and event.target == desk.nic.name and "no rule" in event.detail["rule"]


def test_ip_literals_outside_dns_and_udp_go_nowhere(floor):
    desk, inet, _ = floor
    assert desk.lookup("crm.example.com") == CRM  # opens CRM's address for TCP 80/443
    assert desk.fetch(f"http://{ELSEWHERE}/").startswith("ERROR")  # never resolved: closed
    assert not desk.tcp(IPv4Address(CRM), 853)  # DNS-over-TLS
    assert desk.udp(IPv4Address(CRM), 443) is None  # QUIC
    assert desk.udp(IPv4Address(inet.far_side), 53) is None  # another resolver
    assert not desk.tcp(IPv4Address(inet.host_side), 22)


def test_a_forbidden_name_on_an_allowed_address_is_refused_by_its_tls_name_or_http_host(floor):
    desk, inet, ctx = floor
    assert desk.lookup("shop.example.com") == SHARED  # allowed: opens the address it shares
    assert desk.tls(SHARED, "shop.example.com") == "echo"
    assert desk.tls(SHARED, "forbidden.example.org").startswith("ERROR")
    assert desk.tls(SHARED, "") .startswith("ERROR")  # no name at all
    assert "<h1>CRM</h1>" in desk.fetch("http://shop.example.com/")
    host_header = ("import socket\n"
                   f"s = socket.create_connection(('{SHARED}', 80), timeout=3)\n"
                   "s.sendall(b'GET / HTTP/1.1\\r\\nHost: forbidden.example.org\\r\\nConnection: close\\r\\n\\r\\n')\n"
                   "print(s.recv(200).decode(errors='replace').split('\\r\\n')[0])")
    status = desk.python(host_header)
    assert " 200 " not in status and status.startswith("HTTP/1.1 4"), status
    audited(ctx, "forbidden.example.org", "the proxy's refusal")


def test_a_name_that_resolves_into_the_host_is_not_answered(floor):
    desk, inet, ctx = floor
    assert desk.lookup("rebind.example.com").startswith("ERROR")
    audited(ctx, "rebind.example.com", "the rebinding attempt")


def test_a_policy_apply_closes_a_name_cutting_its_connection_and_another_opens_it(floor):
    desk, inet, ctx = floor
    code = ("import socket, ssl, sys\n"  # a long-lived TLS connection to the shop (an echo server)
            "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
            f"s = ctx.wrap_socket(socket.create_connection(('{SHARED}', 443), timeout=2), "
            "server_hostname='shop.example.com')\n"
            "s.sendall(b'one'); print('first', s.recv(10).decode(), flush=True)\n"
            "sys.stdin.readline()\n"
            "try:\n s.sendall(b'two'); print('second', s.recv(10).decode() or 'closed', flush=True)\n"
            "except OSError as e: print('second cut', type(e).__name__, flush=True)\n")
    assert desk.lookup("shop.example.com") == SHARED
    client = subprocess.Popen(["ip", "netns", "exec", desk.ns, "python3", "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "first one"
        began = time.monotonic()
        policies.apply(ctx, policy(["crm.example.com"]), actor="admin")
        while not desk.lookup("shop.example.com").startswith("ERROR"):
            assert time.monotonic() - began < 5, "the removed name still resolves"
            time.sleep(0.2)
        time.sleep(0.5)
        client.stdin.write("\n")
        client.stdin.flush()
        second = client.stdout.readline().strip()
        assert second in ("second closed",) or second.startswith("second cut"), "the connection survived the policy"
    finally:
        client.kill()
    assert desk.fetch(f"http://{SHARED}/").startswith("ERROR")
    policies.apply(ctx, policy(["shop.example.com"]), actor="admin")
    deadline = time.monotonic() + 5
    while "<h1>CRM</h1>" not in desk.fetch("http://shop.example.com/"):
        assert time.monotonic() < deadline, "the added name never opened"
        time.sleep(0.2)


def test_a_flushed_set_gets_back_what_the_resolver_opened(floor):
    """A replaced table (the host network repairs one it finds out of date) starts with an empty
    `allowed` set; the resolver puts back what it opened, without waiting for new lookups."""
    desk, inet, _ = floor
    assert desk.lookup("crm.example.com") == CRM
    table = table_name(desk.nic.name.split("-")[1])
    subprocess.run(["nft", "flush", "set", "inet", table, "allowed"], check=True)
    deadline = time.monotonic() + 5
    while CRM not in subprocess.run(["nft", "list", "set", "inet", table, "allowed"], capture_output=True,
                                    text=True, check=True).stdout:
        assert time.monotonic() < deadline, "what the resolver opened never came back"
        time.sleep(0.2)
    assert "<h1>CRM</h1>" in desk.fetch("http://crm.example.com/")  # its answer was cached: no new opening
