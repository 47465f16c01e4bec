"""The nftables rules of a host's desktop network, as a small object model rendered to nft's own
syntax (loaded atomically with `nft -f`; golden-file tested).

Two tables, both named after the installation, so several installations share a host:

- `bridge sd_INSTANCE` works on frames from the installation's desktop ports (the kernel here
  has no `meta ibrname`, so ports are told apart by their name's prefix). A desktop's frames may only
  reach the host, never another desktop (no forwarding between ports), and only with the MAC and
  address the control plane gave its port: the `ports` set holds (port, MAC, address) triples,
  ARP must tell the same truth, and DHCP requests may come from a known port and MAC before the
  desktop has its address. Everything else, IPv6 included, is dropped.
- `inet sd_INSTANCE` works on packets. To the host a desktop may send DHCP and DNS (the resolver)
  and nothing else: not the API, the gateway, the directory or SSH. A TCP connection to port 80
  or 443 of an address in the `allowed` set (which the resolver fills, per desktop, with the
  answers its policy allows, each for the record's TTL) is redirected to the host's proxy, which
  checks the name inside (TLS SNI, HTTP Host) against the same policy. Nothing else is routed
  on: no UDP (no QUIC, no outside DNS), no DNS-over-TLS, no other port, no IP literal. Deleting
  a connection's conntrack entry after a policy change cuts it: its next packet is new, finds no
  pair in the set and is refused. Nothing from outside reaches a desktop unless the desktop
  opened the connection. IPv6 is dropped.

Every value that reaches the text is typed (addresses, validated interface names), never free text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from controlplane.domain.network import DesktopNetwork, DesktopNic

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\*?$")
INSTANCE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
DNS_PORT, DHCP_PORT = 53, 67
PROXIED = {80: 3129, 443: 3130}  # web port -> Squid's intercepting port (drivers/netfilter/proxy.py)
NAT_HOOKS = {"prerouting": "dstnat", "postrouting": "srcnat"}


@dataclass
class NftSet:
    name: str
    type: str
    flags: tuple[str, ...] = ()

    def render(self) -> list[str]:
        lines = [f"set {self.name} {{", f"type {self.type}"]
        if self.flags:
            lines.append(f"flags {', '.join(self.flags)}")
        return [*lines, "}"]


@dataclass
class Chain:
    name: str
    rules: list[str]
    hook: str | None = None  # a base chain: hooked into the kernel at this point (filter, or NAT)

    def render(self) -> list[str]:
        lines = [f"chain {self.name} {{"]
        if self.hook in NAT_HOOKS:
            lines.append(f"type nat hook {self.hook} priority {NAT_HOOKS[self.hook]}; policy accept;")
        elif self.hook:
            lines.append(f"type filter hook {self.hook} priority filter; policy accept;")
        return [*lines, *self.rules, "}"]


@dataclass
class Table:
    family: str
    name: str
    sets: list[NftSet] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)

    def body(self) -> list[str]:
        rendered = [item.render() for item in self.sets] + [item.render() for item in self.chains]
        return ["\t" + line for item in rendered for line in item]

    def render(self, comment: str) -> str:
        inner = [f'\tcomment "{comment}"', *self.body()]
        return "\n".join([f"table {self.family} {self.name} {{", *inner, "}"]) + "\n"

    @property
    def digest(self) -> str:
        """What the table says, in 16 hex digits: a table whose comment carries another digest is
        out of date and replaced (its sets' contents with it)."""
        return hashlib.sha256("\n".join(self.body()).encode()).hexdigest()[:16]


def table_name(instance: str) -> str:
    if not INSTANCE.match(instance):
        raise ValueError(f"instance: {instance!r} is not an installation tag")
    return f"sd_{instance}"


def _ifname(name: str) -> str:
    if not IFNAME.match(name):
        raise ValueError(f"network.bridge: {name!r} is not an interface name")
    return f'"{name}"'


def bridge_table(instance: str, net: DesktopNetwork) -> Table:
    ports = _ifname(net.ports)
    return Table("bridge", table_name(instance), sets=[
        NftSet("ports", "ifname . ether_addr . ipv4_addr"),
        NftSet("port_macs", "ifname . ether_addr"),
    ], chains=[
        Chain("forward", [f"iifname {ports} drop"], hook="forward"),  # desktop to desktop: never
        Chain("input", [f"iifname {ports} jump from_desktop"], hook="input"),
        Chain("from_desktop", [
            "ether type arp iifname . ether saddr . arp saddr ip @ports"
            " iifname . arp saddr ether . arp saddr ip @ports accept",
            "ether type ip iifname . ether saddr . ip saddr @ports accept",
            f"ether type ip ip saddr 0.0.0.0 udp dport {DHCP_PORT} iifname . ether saddr @port_macs accept",
            "counter drop",
        ]),
    ])


def inet_table(instance: str, net: DesktopNetwork) -> Table:
    br, host = _ifname(net.bridge), net.host
    return Table("inet", table_name(instance), sets=[
        NftSet("allowed", "ipv4_addr . ipv4_addr", flags=("timeout",)),
    ], chains=[
        Chain("input", [f"iifname {br} jump from_desktops"], hook="input"),
        Chain("from_desktops", [
            "meta nfproto ipv6 drop",
            "ct state established,related accept",
            f"ip daddr {host} udp dport {{ {DNS_PORT}, {DHCP_PORT} }} accept",
            f"ip daddr 255.255.255.255 udp dport {DHCP_PORT} accept",
            f"ip daddr {host} tcp dport {DNS_PORT} accept",
            # the proxy only for what was redirected to it (never dialled directly)
            f"ip daddr {host} tcp dport {{ {', '.join(str(p) for p in PROXIED.values())} }} ct status dnat accept",
            "counter drop",
        ]),
        Chain("forward", [
            f"iifname {br} jump egress",
            f"oifname {br} ct state established,related accept",
            f"oifname {br} drop",
        ], hook="forward"),
        # nothing a desktop sends is routed on by itself: web traffic to opened addresses goes
        # through the proxy (redirected below); QUIC, DNS-over-TLS, other ports and IPs end here
        Chain("egress", ["meta nfproto ipv6 drop", "counter reject with icmpx admin-prohibited"]),
        Chain("to_proxy", [
            f"iifname {br} tcp dport {web} ip saddr . ip daddr @allowed redirect to :{proxy}"
            for web, proxy in PROXIED.items()
        ], hook="prerouting"),
        Chain("leave", [f"ip saddr {net.subnet} oifname != {br} masquerade"], hook="postrouting"),
    ])


def tables(instance: str, net: DesktopNetwork) -> list[Table]:
    return [bridge_table(instance, net), inet_table(instance, net)]


def replace_tables(wanted: list[Table]) -> str:
    """One nft script that creates or replaces WANTED atomically (add; delete; define again)."""
    lines: list[str] = []
    for table in wanted:
        lines += [f"add table {table.family} {table.name}", f"delete table {table.family} {table.name}"]
    script = "\n".join(lines) + "\n"
    return script + "".join(table.render(f"shiftdesk digest={table.digest}") for table in wanted)


def delete_tables(instance: str) -> str:
    name = table_name(instance)
    return "".join(f"add table {family} {name}\ndelete table {family} {name}\n" for family in ("bridge", "inet"))


def port_elements(instance: str, nics: list[DesktopNic]) -> str:
    """Set the bridge's `ports` and `port_macs` to exactly NICS, in one transaction."""
    name = table_name(instance)
    lines = [f"flush set bridge {name} ports", f"flush set bridge {name} port_macs"]
    ordered = sorted(nics, key=lambda nic: int(nic.ipv4))
    if ordered:
        triples = ", ".join(f'"{nic.tap}" . {nic.mac} . {nic.ipv4}' for nic in ordered)
        pairs = ", ".join(f'"{nic.tap}" . {nic.mac}' for nic in ordered)
        lines += [f"add element bridge {name} ports {{ {triples} }}",
                  f"add element bridge {name} port_macs {{ {pairs} }}"]
    return "\n".join(lines) + "\n"

