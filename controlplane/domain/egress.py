"""What a desktop may reach on the internet, the pure part: which names the resolver answers,
which answers it passes on, how long the firewall keeps an answer open, and how refusals are
counted so a browser retrying a blocked tracker costs one audit line, not thousands.

The resolver on the host is the only way a desktop learns an address it may use: the firewall
opens (desktop, address) pairs from the answers it gives, nothing else. So a name is answered
only when the desktop's policy allows it, and an answer is dropped when it points somewhere no
name should lead (the host, the desktop network, private and special-purpose ranges: DNS
rebinding).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from controlplane.domain.policy import rule_covers

# RFC 6890 special-purpose ranges and multicast/reserved: no public name may resolve into them
SPECIAL_RANGES = tuple(IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))
# Firefox asks this name before it turns DNS-over-HTTPS on by itself: NXDOMAIN keeps it off
DOH_CANARY = "use-application-dns.net"
MIN_OPEN_S = 60  # Firefox caches an answer for 60 s whatever its TTL: the firewall keeps it as long
MAX_OPEN_S = 3600


@dataclass(frozen=True)
class NameDecision:
    allowed: bool
    rule: str  # the rule that allows the name, or why it is refused


def decide_name(allowlist: Iterable[str], name: str) -> NameDecision:
    """May a desktop whose policy allows ALLOWLIST resolve NAME?"""
    host = name.lower().rstrip(".")
    if host == DOH_CANARY or host.endswith("." + DOH_CANARY):
        return NameDecision(False, "DNS-over-HTTPS canary (always refused)")
    for rule in sorted(allowlist):
        if rule_covers(rule, host):
            return NameDecision(True, rule)
    return NameDecision(False, "no rule of the policy covers it")


def answer_refused(address: IPv4Address, forbidden: Iterable[IPv4Network]) -> bool:
    """An answer that points into FORBIDDEN (the host's own networks, the desktop network) or a
    special-purpose range is a rebinding attempt, never an address to open."""
    return any(address in net for net in (*SPECIAL_RANGES, *forbidden))


def open_for(ttl: int) -> int:
    """Seconds the firewall keeps an answer open: its TTL, within [MIN_OPEN_S, MAX_OPEN_S]."""
    return max(MIN_OPEN_S, min(MAX_OPEN_S, ttl))


@dataclass(frozen=True)
class Refusal:
    desktop: str
    user: str | None
    name: str
    rule: str


class RefusalCounter:
    """Refusals counted per (desktop, user, name, rule) and drained into the audit log once per
    period. Memory is bounded: past MAX_KEYS distinct refusals the oldest key is dropped and
    counted as `dropped`, so a guest inventing names cannot grow it."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: OrderedDict[Refusal, int] = OrderedDict()
        self.dropped = 0

    def note(self, refusal: Refusal) -> None:
        if refusal in self._counts:
            self._counts[refusal] += 1
            return
        if len(self._counts) >= self.max_keys:
            _, lost = self._counts.popitem(last=False)
            self.dropped += lost
        self._counts[refusal] = 1

    def drain(self) -> tuple[list[tuple[Refusal, int]], int]:
        """Everything counted since the last drain, and how many refusals were dropped uncounted."""
        counted, dropped = list(self._counts.items()), self.dropped
        self._counts.clear()
        self.dropped = 0
        return counted, dropped
