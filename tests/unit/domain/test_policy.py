from controlplane.domain.policy import DEFAULT, DataRules, Policy, SessionLimits, diff_documents, effective, rule_covers


def pol(name, groups, **kw):
    return Policy(name=name, groups=frozenset(groups), **kw)


def test_rule_covers_exact_and_suffix():
    assert rule_covers("example.com", "example.com")
    assert not rule_covers("example.com", "www.example.com")
    assert rule_covers("*.example.com", "a.example.com") and rule_covers("*.example.com", "a.b.example.com")
    assert not rule_covers("*.example.com", "example.com")
    assert not rule_covers("*.example.com", "evilexample.com")
    assert rule_covers("*.example.com", "*.a.example.com")


def test_no_matching_policy_is_the_restrictive_default():
    eff = effective([pol("a", {"x"}, apps=frozenset({"crm"}))], frozenset({"y"}), "sales")
    assert eff.applied == (DEFAULT.name,) and eff.apps == frozenset() and eff.watermark
    assert not eff.allows_domain("anything.example")


def test_most_restrictive_wins():
    a = pol("a", {"agents"}, apps=frozenset({"crm", "phone", "kb"}),
            domains=frozenset({"*.brand.example", "kb.example"}),
            data=DataRules(audio=True, printing=True), watermark=False, session=SessionLimits(20, 10, 10))
    b = pol("b", {"sales"}, apps=frozenset({"crm", "phone", "game"}), domains=frozenset({"crm.brand.example"}),
            data=DataRules(audio=True), watermark=True, session=SessionLimits(15, 12, 5))
    eff = effective([a, b], frozenset({"AGENTS", "sales"}), "sales")
    assert eff.applied == ("a", "b")
    assert eff.apps == {"crm", "phone"}
    assert eff.domains == {"crm.brand.example"}  # allowed by b exactly and by a's wildcard
    assert eff.allows_domain("crm.brand.example") and not eff.allows_domain("kb.example")
    assert eff.data == DataRules(audio=True, printing=False)
    assert eff.watermark is True
    assert eff.session == SessionLimits(15, 10, 5)


def test_pool_binding():
    p = pol("a", {"g"}, pools=frozenset({"sales"}), apps=frozenset({"crm"}))
    assert effective([p], frozenset({"g"}), "sales").apps == {"crm"}
    assert effective([p], frozenset({"g"}), "support").applied == (DEFAULT.name,)


def test_diff_documents_field_level():
    old = {"a": {"x": 1, "y": {"z": [1]}}, "gone": {}}
    new = {"a": {"x": 2, "y": {"z": [1]}}, "new": {}}
    assert diff_documents(old, new) == [
        {"policy": "a", "change": "changed", "fields": [{"field": "x", "old": 1, "new": 2}]},
        {"policy": "gone", "change": "removed", "fields": []},
        {"policy": "new", "change": "added", "fields": []},
    ]
