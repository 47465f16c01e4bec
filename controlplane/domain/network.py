"""Desktop networking, the pure part: which address, MAC and host-side port each desktop gets.

Every desktop of a host sits on one isolated network that ShiftDesk owns (a bridge on the host;
drivers/netfilter builds it). The control plane hands out the addresses, so the host can check
every frame against them: a desktop whose frames carry another MAC or source address than the
ones below is spoofing, and its frames are dropped. The MAC follows from the address and the port
name from the installation and the desktop's name, so they can never drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

FIRST_HOST_OFFSET = 10  # .1 is the host; .2-.9 stay free for the host's own services
MAC_PREFIX = "52:54:00"  # QEMU's OUI, which libvirt uses for its own generated MACs


class AddressPoolExhausted(ValueError):
    """Every address of the desktop network is taken: the subnet is too small for the host."""


@dataclass(frozen=True)
class DesktopNic:
    """A desktop's one NIC: its address, the MAC that must go with it, the host-side port (tap)
    and the bridge the port joins."""

    name: str  # the desktop's domain name
    ipv4: IPv4Address
    mac: str
    tap: str
    bridge: str


@dataclass(frozen=True)
class DesktopNetwork:
    """One installation's desktop network on a host: the subnet, its bridge, and the prefix of
    its desktops' ports. The host's address (.1) is the desktops' gateway, resolver and DHCP
    server."""

    subnet: IPv4Network
    bridge: str
    port_prefix: str  # 'sd' + 4 hex digits of the installation: its ports, and nobody else's

    def __post_init__(self) -> None:
        if self.subnet.prefixlen > 24 or self.subnet.prefixlen < 8:
            raise ValueError(f"network.subnet: {self.subnet} must be between /8 and /24")
        if not self.subnet.is_private:
            raise ValueError(f"network.subnet: {self.subnet} is not a private range")
        if not 1 <= len(self.bridge) <= 15 or self.bridge.startswith(self.port_prefix):
            raise ValueError(f"network.bridge: {self.bridge!r} must be 1-15 characters (a Linux interface name) "
                             f"not starting with {self.port_prefix}")

    @classmethod
    def of(cls, instance: str, subnet: IPv4Network, bridge: str | None = None) -> DesktopNetwork:
        return cls(subnet=subnet, bridge=bridge or f"sd-{instance}", port_prefix="sd" + _digest(instance, 4))

    @property
    def host(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def first(self) -> IPv4Address:
        return self.subnet.network_address + FIRST_HOST_OFFSET

    @property
    def last(self) -> IPv4Address:
        return self.subnet.broadcast_address - 1

    @property
    def ports(self) -> str:
        """An nft wildcard for every port of this installation (and of no other)."""
        return self.port_prefix + "*"

    def nic(self, name: str, ipv4: IPv4Address) -> DesktopNic:
        if ipv4 not in self.subnet or not self.first <= ipv4 <= self.last:
            raise ValueError(f"ipv4: {ipv4} is not a desktop address of {self.subnet}")
        # Linux allows 15 characters: the installation's prefix (6) and 9 hex digits of the name
        return DesktopNic(name=name, ipv4=ipv4, mac=mac_for(ipv4), tap=self.port_prefix + _digest(name, 9),
                          bridge=self.bridge)


def _digest(text: str, digits: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def mac_for(ipv4: IPv4Address) -> str:
    """52:54:00 and the address's low three bytes: unique on a network of at most a /8."""
    return MAC_PREFIX + "".join(f":{b:02x}" for b in ipv4.packed[1:])


def allocate(network: DesktopNetwork, used: Iterable[IPv4Address]) -> IPv4Address:
    """The lowest free address of NETWORK. Addresses are reused once their desktop is gone; the
    MAC comes with the address, so a reused address never meets a stale neighbour entry."""
    taken = set(used)
    address = network.first
    while address <= network.last:
        if address not in taken:
            return address
        address += 1
    raise AddressPoolExhausted(f"network.subnet: every address of {network.subnet} is in use")
