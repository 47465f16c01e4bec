"""The enforcing resolver: the desktops' only DNS server, and the only way an address gets into
the firewall's `allowed` set.

For each query it looks up the desktop by source address (the bridge already dropped forged
ones), answers only names the desktop's current policy allows, forwards those upstream, drops
answers that point into private or host ranges (rebinding), opens each remaining address for
that desktop in the firewall *before* the answer leaves, and counts everything it refuses.
When a desktop's allowlist shrinks (a policy apply, another agent signing in) it closes the
addresses that only the names it lost had opened, and the firewall cuts their connections.

A desktop is untrusted: every structure here is bounded (the answer cache, the addresses opened
per desktop, the refusal counter) and queries are rate-limited per desktop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from controlplane.domain.egress import Refusal, RefusalCounter, answer_refused, decide_name, open_for
from controlplane.domain.token_bucket import TokenBucket
from controlplane.services.egress import Allowlists, DesktopEgress

log = logging.getLogger(__name__)
CACHE_ENTRIES = 10_000
OPEN_PER_DESKTOP = 2_048
QUERIES_PER_S, QUERY_BURST = 50.0, 200.0
UPSTREAM_TIMEOUT_S = 2.0


class Firewall(Protocol):
    def open(self, desktop: IPv4Address, address: IPv4Address, seconds: int) -> None: ...

    def close(self, desktop: IPv4Address, addresses: Collection[IPv4Address]) -> None: ...

    def restore(self, pairs: Collection[tuple[IPv4Address, IPv4Address, int]]) -> None:
        """Put back (desktop, address, seconds) pairs that are missing; leave present ones as they are."""


@dataclass
class Opened:
    """What one desktop was let through to: address -> the names whose answers opened it, and
    until when the firewall keeps it open (refreshed only once half of that has passed)."""

    addresses: OrderedDict[IPv4Address, set[str]] = field(default_factory=OrderedDict)
    until: dict[IPv4Address, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53


class EgressResolver:
    def __init__(self, firewall: Firewall, upstream: list[Upstream], forbidden: list[IPv4Network],
                 refusals: RefusalCounter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.firewall, self.upstream, self.forbidden = firewall, upstream, forbidden
        self.refusals = refusals or RefusalCounter()
        self.clock = clock
        self.allowlists: Allowlists = {}
        self._cache: OrderedDict[tuple[str, int], tuple[float, dns.message.Message]] = OrderedDict()
        self._opened: dict[IPv4Address, Opened] = {}
        self._buckets: dict[IPv4Address, TokenBucket] = {}
        self._replies: OrderedDict[tuple[IPv4Address, bytes], tuple[float, bytes]] = OrderedDict()

    # --- policy changes ----------------------------------------------------------------------

    def update(self, allowlists: Allowlists) -> None:
        """Adopt new allowlists; close what a desktop may no longer reach (or every address of a
        desktop that is gone). Called every second: only desktops whose allowlist changed are
        looked at."""
        changed = {d for d in self.allowlists.keys() | allowlists.keys()
                   if allowlists.get(d) != self.allowlists.get(d)}
        if not changed:
            return
        for key in [k for k in self._replies if k[0] in changed]:
            del self._replies[key]  # answers given under a desktop's old rules are not given again
        for desktop in changed & self._opened.keys():
            opened, now = self._opened[desktop], allowlists.get(desktop)
            lost = [a for a, names in opened.addresses.items()
                    if now is None or not any(decide_name(now.domains, n).allowed for n in names)]
            if lost:
                self.firewall.close(desktop, lost)
                for address in lost:
                    del opened.addresses[address]
                    opened.until.pop(address, None)
            if now is None:
                del self._opened[desktop]
        for desktop in changed - allowlists.keys():
            self._buckets.pop(desktop, None)
        self.allowlists = allowlists

    def reassert(self) -> int:
        """Put every pair this resolver opened and that has not expired back into the firewall,
        with the time it has left. The host network replaces its table when it finds it out of
        date (flushed, or changed by someone), which empties the set: without this a desktop
        would lose addresses it was given until it asked again (browsers cache answers for a
        minute). Called every few seconds; returns how many pairs it asserted."""
        now = self.clock()
        pairs = [(desktop, address, int(until - now)) for desktop, opened in self._opened.items()
                 for address, until in opened.until.items() if until - now >= 1]
        if pairs:
            self.firewall.restore(pairs)
        return len(pairs)

    # --- queries -----------------------------------------------------------------------------

    async def handle(self, wire: bytes, client: IPv4Address) -> bytes | None:
        """The answer to one query from CLIENT, or None to stay silent (not a desktop, flooding,
        or not a DNS query at all)."""
        desktop = self.allowlists.get(client)
        if desktop is None or self._flooding(client) or len(wire) < 12:
            return None
        key = (client, wire[2:])  # the same question from the same desktop: the same answer but its id
        hit = self._replies.get(key)
        if hit is not None and hit[0] > self.clock():
            return wire[:2] + hit[1]
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1 or query.opcode() != 0:
            return _reply(query, dns.rcode.REFUSED).to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        decision = decide_name(desktop.domains, name)
        if not decision.allowed:
            self.refusals.note(Refusal(desktop.name, desktop.user, name, decision.rule))
            return _reply(query, dns.rcode.REFUSED).to_wire()
        if question.rdtype != dns.rdatatype.A or question.rdclass != dns.rdataclass.IN:
            return _reply(query, dns.rcode.NOERROR).to_wire()  # IPv6, HTTPS/SVCB hints, TXT...: nothing
        answer = await self._lookup(query, name)
        if answer is None:
            return _reply(query, dns.rcode.SERVFAIL).to_wire()
        reply = self._pass_on(query, answer, client, desktop, name).to_wire()
        self._remember(key, reply, answer)
        return reply

    def _remember(self, key: tuple[IPv4Address, bytes], reply: bytes, answer: dns.message.Message) -> None:
        """Keep REPLY for the same question until half the time its addresses stay open (so the
        firewall is refreshed before it forgets them) or its records expire, whichever is first."""
        ttl = min((rrset.ttl for rrset in answer.answer), default=0)
        _keep(self._replies, key, (self.clock() + min(ttl, open_for(ttl) / 2), reply[2:]))

    def _flooding(self, client: IPv4Address) -> bool:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(QUERIES_PER_S, QUERY_BURST, self.clock)
        if bucket.delay(1.0) == 0:
            return False
        bucket.tokens += 1.0  # a dropped query costs nothing: the desktop is back once it slows down
        return True

    async def _lookup(self, query: dns.message.Message, name: str) -> dns.message.Message | None:
        key = (name, dns.rdatatype.A)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock():
            self._cache.move_to_end(key)
            return cached[1]
        ask = dns.message.make_query(name, dns.rdatatype.A)
        for server in self.upstream:
            try:
                answer = await dns.asyncquery.udp(ask, server.host, port=server.port, timeout=UPSTREAM_TIMEOUT_S)
                if answer.flags & dns.flags.TC:
                    answer = await dns.asyncquery.tcp(ask, server.host, port=server.port, timeout=UPSTREAM_TIMEOUT_S)
            except (dns.exception.DNSException, OSError) as err:
                log.warning("upstream %s did not answer %s: %s", server.host, name, err)
                continue
            ttl = min((rrset.ttl for rrset in answer.answer), default=30)
            _keep(self._cache, key, (self.clock() + ttl, answer))
            return answer
        return None

    def _pass_on(self, query: dns.message.Message, answer: dns.message.Message, client: IPv4Address,
                 desktop: DesktopEgress, name: str) -> dns.message.Message:
        """QUERY's reply: ANSWER's records minus rebinding addresses, each remaining address
        opened for CLIENT first."""
        reply = _reply(query, answer.rcode())
        refused = False
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                reply.answer.append(rrset)
                continue
            if rrset.rdtype != dns.rdatatype.A:
                continue
            kept = [rd for rd in rrset if not answer_refused(IPv4Address(rd.address), self.forbidden)]
            refused |= len(kept) < len(rrset)
            for rd in kept:
                self._open(client, IPv4Address(rd.address), name, rrset.ttl)
            if kept:
                reply.answer.append(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, kept))
        if refused:
            self.refusals.note(Refusal(desktop.name, desktop.user, name,
                                       "answer points into a private or host range (DNS rebinding)"))
        return reply

    def _open(self, client: IPv4Address, address: IPv4Address, name: str, ttl: int) -> None:
        opened = self._opened.setdefault(client, Opened())
        names = opened.addresses.pop(address, set())
        names.add(name)
        opened.addresses[address] = names
        seconds, now = open_for(ttl), self.clock()
        if opened.until.get(address, 0.0) - now < seconds / 2:
            self.firewall.open(client, address, seconds)
            opened.until[address] = now + seconds
        if len(opened.addresses) > OPEN_PER_DESKTOP:  # the oldest goes; the firewall's timeout ends it
            oldest, _ = opened.addresses.popitem(last=False)
            opened.until.pop(oldest, None)


def _keep(cache: OrderedDict, key: object, value: object) -> None:
    """Put VALUE in a least-recently-used CACHE of at most CACHE_ENTRIES entries."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    reply.flags |= dns.flags.RA
    return reply
