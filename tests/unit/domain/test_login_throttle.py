"""The sign-in throttle's rule (see the module docstring), with an AD lockout model as oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.domain.login_throttle import AuditTally, LoginThrottle, ThrottleRules

RULES = ThrottleRules(ad_lockout_threshold=10, window_s=1800, pair_free_failures=3, max_backoff_s=900,
                      source_failures=30, familiar_days=30, max_entries=1000)


def test_typos_are_free_then_back_off_doubles():
    t = LoginThrottle(RULES)
    for _ in range(3):
        assert t.check("alice", "10.0.0.9", 0) is None
        t.failed("alice", "10.0.0.9", 0)
    t2 = LoginThrottle(ThrottleRules(ad_lockout_threshold=0, pair_free_failures=3))
    for i in range(6):
        t2.failed("alice", "a", 100)
    refusal = t2.check("alice", "a", 100)
    assert refusal is not None and refusal.scope == "user+source" and refusal.retry_after == 8  # 2**(6-3)
    assert t2.check("alice", "a", 108) is None
    assert t2.check("alice", "b", 100) is None, "another address is not slowed by this one"


def test_budgets_stay_below_ad_threshold():
    for threshold in range(1, 60):
        unfamiliar, familiar = ThrottleRules(ad_lockout_threshold=threshold).budgets()
        assert unfamiliar >= 1 and familiar >= 1
        if threshold >= 3:
            assert unfamiliar + familiar < threshold


def test_a_sprayed_name_still_signs_in_from_a_familiar_address():
    t = LoginThrottle(RULES)
    t.succeeded("alice", "home", 0)
    for i in range(200):  # botnet: many addresses, wrong passwords
        src = f"198.51.100.{i % 50}"
        if t.check("alice", src, 10 + i) is None:
            t.failed("alice", src, 10 + i)
    assert t.check("ALICE@corp.example", "203.0.113.7", 300).scope == "user"  # unfamiliar half spent
    assert t.check("alice", "home", 300) is None, "the agent at home is not locked out"


def test_one_address_spraying_many_names_is_slowed_but_not_familiar_pairs_behind_it():
    t = LoginThrottle(RULES)
    t.succeeded("bob", "nat", 0)
    for i in range(30):
        t.failed(f"user{i}", "nat", 1)
    assert t.check("user99", "nat", 1).scope == "source"
    assert t.check("bob", "nat", 1) is None, "an agent on the same NAT still gets in"


def test_success_clears_the_user_and_memory_is_bounded():
    t = LoginThrottle(RULES)
    for _ in range(5):
        t.failed("carol", "x", 0)
    assert t.check("carol", "x", 0) is not None
    t.succeeded("carol", "x", 0)
    assert t.check("carol", "x", 0) is None
    for i in range(20 * RULES.max_entries):
        t.failed(f"n{i}", f"s{i % 7}", 5)
    assert max(len(t._pairs), len(t._users), len(t._sources)) <= RULES.max_entries


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alice", "Alice", "alice@corp.example", "bob"]),
                          st.sampled_from(["home", "a", "b", "c", "d"]),
                          st.floats(0, 900), st.booleans()), max_size=300))
def test_ad_never_locks_an_account_through_us(events):
    """Oracle: AD's badPwdCount, which resets when a bad attempt comes over a window after the last."""
    t = LoginThrottle(RULES)
    t.succeeded("alice", "home", 0)
    now, ad = 1.0, {}  # user -> (count, last bad attempt)
    for user, src, dt, correct in events:
        now += dt
        if t.check(user, src, now) is not None:
            continue  # refused here: AD never sees it
        key = user.lower().split("@")[0]
        if correct and key == "alice" and src == "home":
            t.succeeded(user, src, now)
            ad[key] = (0, now)
            continue
        t.failed(user, src, now)
        count, last = ad.get(key, (0, now))
        count = count + 1 if now - last < RULES.window_s else 1
        ad[key] = (count, now)
        assert count < RULES.ad_lockout_threshold - 1, f"{key} reached {count} bad passwords at AD"


def test_audit_tally_writes_log2_rows():
    tally = AuditTally(window_s=60, cap=100)
    rows = [n for i in range(1000) if (n := tally.count(("alice", "x"), i * 0.01)) is not None]
    assert rows == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert tally.count(("alice", "x"), 61) == 1, "a new window starts a new count"
