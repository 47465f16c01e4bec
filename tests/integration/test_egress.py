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

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.egress import RefusalCounter
from controlplane.domain.network import DesktopNetwork
from controlplane.drivers.netfilter.egress import NftEgressFirewall
from controlplane.drivers.netfilter.host_network import LinuxHostNetwork, host_addresses
from controlplane.resolver.core import EgressResolver, Upstream
from controlplane.resolver.server import ResolverService
from controlplane.services import policies, pools
from tests.conftest import SALES
from tests.integration.test_desktop_network import FakeDesktop, sh

CRM, SHARED, ELSEWHERE = "93.184.216.34", "93.184.216.35", "93.184.216.36"
VENV_PY = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")


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


class Internet:
    """A namespace with public-looking addresses, reached only through a veth from the host."""

    def __init__(self, tag: str) -> None:
        self.ns, self.up = f"{tag}-inet", f"{tag}-up"
        third = secrets.randbelow(200) + 20
        self.host_side, self.far_side = f"10.232.{third}.1", f"10.232.{third}.2"
        self.procs: list[subprocess.Popen] = []
        self.www = Path(f"/run/shiftdesk/{tag}-www")

    def run(self, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.up, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_side}/30", "dev", self.up)
        sh("ip", "link", "set", self.up, "up")
        inside = ["ip", "netns", "exec", self.ns]
        sh(*inside, "ip", "addr", "add", f"{self.far_side}/30", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        for address in (CRM, SHARED, ELSEWHERE):
            sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "lo")
        sh("ip", "route", "add", "93.184.216.32/29", "via", self.far_side)
        self.www.mkdir(parents=True, exist_ok=True)
        (self.www / "index.html").write_text("<h1>CRM</h1>\n")
        self.run("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                 f"--listen-address={self.far_side}", "--bind-interfaces", "--user=root",
                 f"--address=/crm.example.com/{CRM}", f"--address=/shop.example.com/{SHARED}",
                 f"--address=/forbidden.example.org/{SHARED}", f"--address=/rebind.example.com/{self.host_side}",
                 f"--address=/other.example.com/{ELSEWHERE}")
        self.run("python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", str(self.www))
        self.run("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 "s.bind(('0.0.0.0', 443))\nwhile True:\n d, p = s.recvfrom(100); s.sendto(d, p)")
        self.run("python3", "-c", "import socket; s = socket.create_server(('0.0.0.0', 853))\n"
                 "while True:\n c, _ = s.accept(); c.sendall(b'dot'); c.close()")
        self.run("python3", "-c", "import socket, threading; s = socket.create_server(('0.0.0.0', 443))\n"
                 "def echo(c):\n while (d := c.recv(100)): c.sendall(d)\n"
                 "while True:\n c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()")
        time.sleep(1.0)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        sh("ip", "route", "del", "93.184.216.32/29", check=False)
        sh("ip", "link", "del", self.up, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.www, ignore_errors=True)


@pytest.fixture
def floor(ctx, image) -> Iterator[tuple[FakeDesktop, Internet, object]]:
    for tool in ("nft", "dnsmasq", "conntrack"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup-host.sh installs it"
    tag = "eg" + secrets.token_hex(3)
    net = DesktopNetwork.of(tag, IPv4Network(f"10.233.{secrets.randbelow(200) + 20}.0/24"))
    host = LinuxHostNetwork(tag, net, Path("/run/shiftdesk") / tag / "net")
    inet = Internet(tag)
    nic = net.nic(f"sd-{tag}-floor-000001", net.first)
    desk = FakeDesktop(f"{tag}-d0", nic)
    service = None
    resolv = Path("/etc/netns") / desk.ns / "resolv.conf"
    try:
        inet.start()
        sh("ip", "netns", "add", desk.ns)
        sh("ip", "link", "add", nic.tap, "type", "veth", "peer", "name", "eth0", "netns", desk.ns)
        host.sync([nic])
        sh("ip", "link", "set", nic.tap, "master", net.bridge, "up")
        for cmd in (["ip", "link", "set", "eth0", "address", nic.mac],
                    ["ip", "addr", "add", f"{nic.ipv4}/{net.subnet.prefixlen}", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", str(net.host)]):
            desk.run(*cmd)
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text(f"nameserver {net.host}\noptions timeout:2 attempts:1\n")
        pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
        policies.apply(ctx, policy(["crm.example.com", "*.example.com"]), actor="admin")
        with session_scope(ctx.engine) as session:
            pool = session.exec(select(Pool).where(Pool.name == "floor")).one()
            session.add(Desktop(name=nic.name, pool_id=pool.id, host_id=ctx.host_id, image_id=image.id,
                                state="in_use", assigned_to="alice", assigned_groups=[SALES], ipv4=str(nic.ipv4)))
        resolver = EgressResolver(NftEgressFirewall(tag), [Upstream(inet.far_side)],
                                  [net.subnet, *host_addresses()], RefusalCounter())
        service = ResolverService(ctx, resolver, net.host, refresh_s=0.2, audit_s=0.5)
        service.start()
        assert service.ready.wait(10), "the resolver did not start"
        yield desk, inet, ctx
    finally:
        if service is not None:
            service.stop()
        sh("ip", "netns", "del", desk.ns, check=False)
        sh("ip", "link", "del", nic.tap, check=False)
        shutil.rmtree(resolv.parent, ignore_errors=True)
        inet.stop()
        host.remove()
        shutil.rmtree(Path("/run/shiftdesk") / tag, ignore_errors=True)


def fetch(desk: FakeDesktop, url: str) -> str:
    """GET URL from the desktop (name resolution through its resolv.conf: our resolver)."""
    code = (f"import urllib.request\ntry: print(urllib.request.urlopen('{url}', timeout=3).read().decode())\n"
            "except Exception as e: print('ERROR', type(e).__name__, e)")
    return desk.run("python3", "-c", code).stdout.strip()


def lookup(desk: FakeDesktop, name: str) -> str:
    code = (f"import socket\ntry: print(socket.gethostbyname('{name}'))\n"
            "except OSError as e: print('ERROR', e)")
    return desk.run("python3", "-c", code).stdout.strip()


def refusals(ctx) -> dict[str, int]:
    with session_scope(ctx.engine) as session:
        events = audit.list_recent(session=session, limit=500)
        return {e.detail["name"]: e.detail["count"] for e in events if e.action == "egress.refused"}


def test_the_agent_reaches_the_crm_and_nothing_else(floor):
    desk, inet, ctx = floor
    assert "<h1>CRM</h1>" in fetch(desk, "http://crm.example.com/")
    assert lookup(desk, "tracker.example.net").startswith("ERROR")
    deadline = time.monotonic() + 5
    while "tracker.example.net" not in refusals(ctx):
        assert time.monotonic() < deadline, "the refusal was never audited"
        time.sleep(0.2)
    with session_scope(ctx.engine) as session:
        event = next(e for e in audit.list_recent(session=session, limit=50) if e.action == "egress.refused")
    assert event.actor == "alice" and event.target == desk.nic.name and "no rule" in event.detail["rule"]


def test_ip_literals_outside_dns_and_udp_go_nowhere(floor):
    desk, inet, _ = floor
    assert lookup(desk, "crm.example.com") == CRM  # opens CRM's address for TCP 80/443
    assert fetch(desk, f"http://{ELSEWHERE}/").startswith("ERROR")  # never resolved: closed
    assert not desk.tcp(IPv4Address(CRM), 853)  # DNS-over-TLS
    assert desk.udp(IPv4Address(CRM), 443) is None  # QUIC
    assert desk.udp(IPv4Address(inet.far_side), 53) is None  # another resolver
    assert not desk.tcp(IPv4Address(inet.host_side), 22)


def test_a_name_that_resolves_into_the_host_is_not_answered(floor):
    desk, inet, ctx = floor
    assert lookup(desk, "rebind.example.com").startswith("ERROR")
    deadline = time.monotonic() + 5
    while "rebind.example.com" not in refusals(ctx):
        assert time.monotonic() < deadline, "the rebinding attempt was never audited"
        time.sleep(0.2)


def test_a_policy_apply_closes_a_name_cutting_its_connection_and_another_opens_it(floor):
    desk, inet, ctx = floor
    code = ("import socket, sys\n"  # a long-lived connection to CRM's TLS port (an echo server here)
            f"s = socket.create_connection(('{CRM}', 443), timeout=2)\n"
            "s.sendall(b'one'); print('first', s.recv(10).decode(), flush=True)\n"
            "sys.stdin.readline()\n"
            "try:\n s.sendall(b'two'); print('second', s.recv(10).decode() or 'closed', flush=True)\n"
            "except OSError as e: print('second cut', type(e).__name__, flush=True)\n")
    assert lookup(desk, "crm.example.com") == CRM
    client = subprocess.Popen(["ip", "netns", "exec", desk.ns, "python3", "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "first one"
        began = time.monotonic()
        policies.apply(ctx, policy(["shop.example.com"]), actor="admin")
        while not lookup(desk, "crm.example.com").startswith("ERROR"):
            assert time.monotonic() - began < 5, "the removed name still resolves"
            time.sleep(0.2)
        time.sleep(0.5)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip().startswith("second cut"), "the open connection survived the policy"
    finally:
        client.kill()
    assert fetch(desk, f"http://{CRM}/").startswith("ERROR")
    policies.apply(ctx, policy(["crm.example.com"]), actor="admin")
    deadline = time.monotonic() + 5
    while "<h1>CRM</h1>" not in fetch(desk, "http://crm.example.com/"):
        assert time.monotonic() < deadline, "the added name never opened"
        time.sleep(0.2)
