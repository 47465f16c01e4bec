"""Egress decisions: names, answers, how long an answer stays open, refusals counted in bounded memory."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from controlplane.domain.egress import (
    MIN_OPEN_S,
    Refusal,
    RefusalCounter,
    answer_refused,
    decide_name,
    open_for,
)
from controlplane.domain.policy import Policy, idle_domains

RULES = frozenset({"crm.example.com", "*.kb.example.com"})


def test_names_follow_the_policy_rules_and_say_which_rule_decided():
    assert decide_name(RULES, "CRM.example.com.").rule == "crm.example.com"
    assert decide_name(RULES, "a.b.kb.example.com").rule == "*.kb.example.com"
    for refused in ("kb.example.com", "example.com", "crm.example.com.evil.org", "xcrm.example.com"):
        assert not decide_name(RULES, refused).allowed
    assert not decide_name({"*.net"}, "use-application-dns.net").allowed


def test_answers_into_special_or_host_ranges_are_rebinding():
    host = [IPv4Network("10.213.0.0/16"), IPv4Network("203.0.114.7/32")]
    for bad in ("10.213.0.1", "127.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1", "100.64.0.1",
                "0.0.0.0", "224.0.0.1", "203.0.114.7"):
        assert answer_refused(IPv4Address(bad), host), bad
    assert not answer_refused(IPv4Address("93.184.216.34"), host)


def test_an_answer_stays_open_at_least_as_long_as_the_browser_caches_it():
    assert open_for(5) == MIN_OPEN_S and open_for(300) == 300 and open_for(86400) == 3600


def test_refusals_are_counted_per_key_and_memory_is_bounded():
    counter = RefusalCounter(max_keys=3)
    for i in range(5):
        for _ in range(10):
            counter.note(Refusal("d", "alice", f"t{i}.example.org", "no rule"))
    counted, dropped = counter.drain()
    assert [(r.name, n) for r, n in counted] == [("t2.example.org", 10), ("t3.example.org", 10),
                                                 ("t4.example.org", 10)]
    assert dropped == 20
    assert counter.drain() == ([], 0)


def test_an_idle_desktop_may_reach_what_every_policy_naming_its_pool_allows():
    sales = Policy(name="sales", groups=frozenset({"g1"}), pools=frozenset({"floor"}),
                   domains=frozenset({"crm.example.com", "*.kb.example.com"}))
    night = Policy(name="night", groups=frozenset({"g2"}), pools=frozenset({"floor"}),
                   domains=frozenset({"crm.example.com"}))
    everywhere = Policy(name="all", groups=frozenset({"g3"}), domains=frozenset({"*.example.com"}))
    assert idle_domains([sales, night, everywhere], "floor") == {"crm.example.com"}
    assert idle_domains([everywhere], "floor") == frozenset()
