"""The enforcing resolver's decisions, against a real UDP upstream on loopback and a firewall
that records what it was told: what is answered, what is opened (and that it is opened before
the answer leaves), what is refused and counted, and what is closed when a policy shrinks."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from controlplane.resolver.core import EgressResolver, Upstream
from controlplane.services.egress import DesktopEgress

DESK = IPv4Address("10.213.0.10")
OTHER = IPv4Address("10.213.0.11")
RECORDS = {  # what the upstream knows: name -> [(type, value, ttl)]
    "crm.example.com": [("A", "93.184.216.34", 300)],
    "kb.example.com": [("CNAME", "edge.cdn.example.net", 60), ("A", "93.184.216.34", 20)],
    "tracker.example.org": [("A", "151.101.1.1", 300)],
    "rebind.example.com": [("A", "10.213.0.1", 300), ("A", "93.184.216.35", 300)],
    "local.example.com": [("A", "127.0.0.1", 300)],
}


class RecordingFirewall:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def open(self, desktop, address, seconds):
        self.events.append(("open", desktop, address, seconds))

    def close(self, desktop, addresses):
        self.events.append(("close", desktop, frozenset(addresses)))

    def restore(self, pairs):
        self.events.append(("restore", frozenset(pairs)))


class Upstream53(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.asked: list[str] = []

    def datagram_received(self, data, addr):
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        name = query.question[0].name.to_text(omit_final_dot=True)
        self.asked.append(name)
        owner = query.question[0].name
        for kind, value, ttl in RECORDS.get(name, []):
            reply.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, value + ("." if kind == "CNAME" else "")))
            if kind == "CNAME":
                owner = dns.name.from_text(value)
        if name not in RECORDS:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(reply.to_wire(), addr)


@pytest.fixture
def world():
    loop = asyncio.new_event_loop()
    transport, upstream = loop.run_until_complete(
        loop.create_datagram_endpoint(Upstream53, local_addr=("127.0.0.1", 0)))
    port = transport.get_extra_info("sockname")[1]
    firewall = RecordingFirewall()
    resolver = EgressResolver(firewall, [Upstream("127.0.0.1", port)], [IPv4Network("10.213.0.0/16")])
    resolver.update({DESK: DesktopEgress("sd-unit-a", "alice", frozenset({"crm.example.com", "*.example.com"}),
                                         ("sales",)),
                     OTHER: DesktopEgress("sd-unit-b", None, frozenset(), ())})
    yield loop, resolver, firewall, upstream
    transport.close()
    loop.close()


def ask(loop, resolver, name, rdtype="A", client=DESK):
    wire = dns.message.make_query(name, rdtype).to_wire()
    reply = loop.run_until_complete(resolver.handle(wire, client))
    return dns.message.from_wire(reply) if reply is not None else None


def addresses(reply):
    return sorted(rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def test_an_allowed_name_is_answered_and_opened_for_that_desktop_only(world):
    loop, resolver, firewall, _ = world
    reply = ask(loop, resolver, "crm.example.com")
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["93.184.216.34"]
    assert firewall.events == [("open", DESK, IPv4Address("93.184.216.34"), 300)]


def test_a_name_no_rule_covers_is_refused_counted_and_opens_nothing(world):
    loop, resolver, firewall, upstream = world
    for _ in range(3):
        assert ask(loop, resolver, "tracker.example.org").rcode() == dns.rcode.REFUSED
    assert firewall.events == [] and "tracker.example.org" not in upstream.asked
    counted, dropped = resolver.refusals.drain()
    assert [(r.desktop, r.user, r.name, n) for r, n in counted] == [("sd-unit-a", "alice", "tracker.example.org", 3)]
    assert "no rule" in counted[0][0].rule and dropped == 0


def test_an_idle_desktop_with_an_empty_allowlist_gets_nothing(world):
    loop, resolver, firewall, _ = world
    assert ask(loop, resolver, "crm.example.com", client=OTHER).rcode() == dns.rcode.REFUSED
    assert firewall.events == []


def test_strangers_get_no_answer_at_all(world):
    loop, resolver, _, _ = world
    assert ask(loop, resolver, "crm.example.com", client=IPv4Address("10.213.0.99")) is None
    assert loop.run_until_complete(resolver.handle(b"\x00garbage", DESK)) is None


def test_rebinding_answers_are_dropped_and_the_rest_kept(world):
    loop, resolver, firewall, _ = world
    reply = ask(loop, resolver, "rebind.example.com")
    assert addresses(reply) == ["93.184.216.35"]
    assert [e[2] for e in firewall.events] == [IPv4Address("93.184.216.35")]
    local = ask(loop, resolver, "local.example.com")
    assert addresses(local) == [] and len(firewall.events) == 1
    counted, _ = resolver.refusals.drain()
    assert {r.name for r, _ in counted} == {"rebind.example.com", "local.example.com"}
    assert all("rebinding" in r.rule for r, _ in counted)


def test_a_cname_chain_is_followed_and_short_ttls_are_kept_open_a_minute(world):
    loop, resolver, firewall, _ = world
    reply = ask(loop, resolver, "kb.example.com")
    assert addresses(reply) == ["93.184.216.34"] and reply.answer[0].rdtype == dns.rdatatype.CNAME
    assert firewall.events == [("open", DESK, IPv4Address("93.184.216.34"), 60)]


def test_ipv6_and_other_types_get_an_empty_answer_and_the_doh_canary_is_refused(world):
    loop, resolver, firewall, _ = world
    for rdtype in ("AAAA", "HTTPS", "TXT"):
        reply = ask(loop, resolver, "crm.example.com", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    resolver.update({**resolver.allowlists, DESK: DesktopEgress("sd-unit-a", "alice",
                                                                 frozenset({"*.net"}), ("x",))})
    assert ask(loop, resolver, "use-application-dns.net").rcode() == dns.rcode.REFUSED
    assert firewall.events == []


def test_a_shrunk_allowlist_closes_only_what_the_lost_names_opened(world):
    loop, resolver, firewall, _ = world
    ask(loop, resolver, "crm.example.com")
    ask(loop, resolver, "rebind.example.com")
    firewall.events.clear()
    resolver.update({DESK: DesktopEgress("sd-unit-a", "alice", frozenset({"crm.example.com"}), ("sales",))})
    assert firewall.events == [("close", DESK, frozenset({IPv4Address("93.184.216.35")}))]
    firewall.events.clear()
    resolver.update({})  # the desktop is gone
    assert firewall.events == [("close", DESK, frozenset({IPv4Address("93.184.216.34")}))]


def test_a_repeated_lookup_is_served_from_the_cache_without_touching_the_firewall(world):
    loop, resolver, firewall, upstream = world
    for _ in range(5):
        assert addresses(ask(loop, resolver, "crm.example.com")) == ["93.184.216.34"]
    assert upstream.asked.count("crm.example.com") == 1 and len(firewall.events) == 1


def test_a_flooding_desktop_is_dropped_until_it_slows_down(world):
    loop, resolver, _, _ = world
    now = [0.0]
    resolver.clock = lambda: now[0]
    resolver._buckets.clear()
    answered = sum(ask(loop, resolver, "tracker.example.org") is not None for _ in range(300))
    assert 150 <= answered <= 220  # the burst, then silence
    now[0] += 2.0
    assert ask(loop, resolver, "tracker.example.org") is not None


def test_a_cached_answer_is_not_given_again_once_the_policy_drops_the_name(world):
    loop, resolver, _, _ = world
    assert addresses(ask(loop, resolver, "crm.example.com")) == ["93.184.216.34"]
    assert addresses(ask(loop, resolver, "crm.example.com")) == ["93.184.216.34"]  # from the reply cache
    resolver.update({DESK: DesktopEgress("sd-unit-a", "alice", frozenset({"kb.example.com"}), ("sales",))})
    assert ask(loop, resolver, "crm.example.com").rcode() == dns.rcode.REFUSED


def test_the_reply_cache_keeps_each_query_id(world):
    loop, resolver, _, _ = world
    first, second = (dns.message.make_query("crm.example.com", "A") for _ in range(2))
    second.id = (first.id + 1) % 65536
    replies = [dns.message.from_wire(loop.run_until_complete(resolver.handle(q.to_wire(), DESK)))
               for q in (first, second)]
    assert [r.id for r in replies] == [first.id, second.id] and addresses(replies[1]) == ["93.184.216.34"]


def test_what_was_opened_and_has_time_left_is_put_back_and_nothing_else(world):
    loop, resolver, firewall, _ = world
    ask(loop, resolver, "crm.example.com")
    firewall.events.clear()
    assert resolver.reassert() == 1
    [(kind, pairs)] = firewall.events
    [(desktop, address, seconds)] = pairs
    assert (kind, desktop, address) == ("restore", DESK, IPv4Address("93.184.216.34")) and 298 <= seconds <= 300
    resolver.update({DESK: DesktopEgress("sd-unit-a", "alice", frozenset({"kb.example.com"}), ("sales",))})
    firewall.events.clear()
    assert resolver.reassert() == 0 and firewall.events == []  # closed by the policy: not put back
