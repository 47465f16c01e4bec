"""The host's desktop network for real: a Linux bridge, nftables and dnsmasq on this host, with
"desktops" that are network namespaces plugged into the bridge through ports named and
addressed exactly as a desktop's NIC would be. Each test sends real frames and checks what the
host lets through: DHCP and DNS to the host only, nothing to other ports of the host, nothing
between desktops, nothing with a forged MAC or address, no IPv6, nothing from a port it no
longer admits."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import suppress
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from bench.netlab import FakeDesktop, purge, sh
from controlplane.domain.network import DesktopNetwork
from controlplane.drivers.netfilter.host_network import LinuxHostNetwork


@pytest.fixture
def world() -> Iterator[tuple[LinuxHostNetwork, list[FakeDesktop]]]:
    for tool in ("nft", "dnsmasq", "ip"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup-host.sh installs it"
    instance = "nt" + secrets.token_hex(3)
    subnet = IPv4Network(f"10.231.{secrets.randbelow(200) + 20}.0/24")
    net = DesktopNetwork.of(instance, subnet)
    host = LinuxHostNetwork(instance, net, Path("/run/shiftdesk") / instance / "net")
    desktops = [FakeDesktop(f"{instance}-d{i}", net.nic(f"sd-{instance}-floor-{i:06x}", net.first + i))
                for i in range(2)]
    try:
        host.sync([d.nic for d in desktops])  # makes the bridge the ports join
        for d in desktops:
            d.plug(net)
        yield host, desktops
    finally:
        for d in desktops:
            d.unplug()
        host.remove()
        purge(instance)


@pytest.fixture
def echo(world) -> Iterator[int]:
    """A UDP echo server on the host's address of the desktop network, port 53 (the resolver's)."""
    host, _ = world
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(host.network.host), 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with suppress(OSError):
                data, peer = sock.recvfrom(100)
                sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield 53
    stop.set()
    thread.join()
    sock.close()


def test_an_admitted_desktop_reaches_the_resolver_port_and_nothing_else_on_the_host(world, echo):
    host, (d0, _) = world
    assert d0.udp(host.network.host, echo) == "ping"
    listener = socket.create_server((str(host.network.host), 8600))  # like the API or the gateway
    try:
        assert not d0.tcp(host.network.host, 8600)
    finally:
        listener.close()


def test_forged_addresses_and_macs_are_dropped(world, echo):
    host, (d0, _) = world
    d0.run("ip", "addr", "add", f"{host.network.first + 50}/32", "dev", "eth0")
    assert d0.udp(host.network.host, echo, source=host.network.first + 50) is None
    assert d0.udp(host.network.host, echo) == "ping"  # its own address still works
    d0.run("ip", "link", "set", "eth0", "address", "52:54:00:66:66:66")
    assert d0.udp(host.network.host, echo) is None


def test_a_desktop_cannot_reach_another_desktop(world):
    _, (d0, d1) = world
    d1.run("ip", "link", "set", "lo", "up")
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{d1.nic.ipv4}', 9999))\nwhile True:\n d, p = s.recvfrom(100); s.sendto(d, p)")
    server = subprocess.Popen(["ip", "netns", "exec", d1.ns, "python3", "-c", code])
    try:
        assert d0.udp(d1.nic.ipv4, 9999) is None
        assert d1.udp(d1.nic.ipv4, 9999) == "ping"  # the echo server works: it is the path that is closed
        assert d0.run("ping", "-c", "1", "-W", "1", str(d1.nic.ipv4), check=False).returncode != 0
    finally:
        server.kill()


def test_ipv6_goes_nowhere(world):
    host, (d0, d1) = world
    link_local = d1.run("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout
    assert "fe80" in link_local, "the namespace has no IPv6 link-local address to try with"
    target = link_local.split()[3].split("/")[0]
    assert d0.run("ping", "-6", "-c", "1", "-W", "1", f"{target}%eth0", check=False).returncode != 0
    assert d0.run("ping", "-6", "-c", "1", "-W", "1", "ff02::1%eth0", check=False).returncode != 0
    assert Path(f"/proc/sys/net/ipv6/conf/{host.network.bridge}/disable_ipv6").read_text().strip() == "1"


def test_dhcp_answers_admitted_macs_with_their_address_only(world):
    host, (d0, d1) = world
    script = Path("/run/shiftdesk") / host.instance / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "lease $ip router $router dns $dns"\nexit 0\n')
    script.chmod(0o755)
    d0.run("ip", "addr", "flush", "dev", "eth0")
    got = d0.run("busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "4", "-T", "1", "-s", str(script),
                 check=False)
    assert f"lease {d0.nic.ipv4} router {host.network.host} dns {host.network.host}" in got.stdout, got.stderr
    d1.run("ip", "addr", "flush", "dev", "eth0")
    d1.run("ip", "link", "set", "eth0", "address", "52:54:00:66:66:67")  # a MAC nobody was given
    refused = d1.run("busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", str(script),
                     check=False)
    assert "lease" not in refused.stdout


def test_a_desktop_that_is_no_longer_admitted_is_cut_off(world, echo):
    host, (d0, d1) = world
    assert d0.udp(host.network.host, echo) == "ping"
    host.sync([d1.nic])
    assert d0.udp(host.network.host, echo) is None
    assert d1.udp(host.network.host, echo) == "ping"


def test_a_flushed_ruleset_or_a_dead_dhcp_server_is_restored_by_the_next_sync(world, echo):
    host, (d0, d1) = world
    sh("nft", "delete", "table", "bridge", f"sd_{host.instance}")
    pid = int((host.state_dir / "dhcp" / "dnsmasq.pid").read_text())
    sh("kill", str(pid))
    host.sync([d0.nic, d1.nic])
    d0.run("ip", "addr", "add", f"{host.network.first + 50}/32", "dev", "eth0")
    assert d0.udp(host.network.host, echo, source=host.network.first + 50) is None  # forged: dropped again
    assert (host.state_dir / "dhcp" / "dnsmasq.pid").read_text().strip() != str(pid)
    assert d0.udp(host.network.host, echo) == "ping"
