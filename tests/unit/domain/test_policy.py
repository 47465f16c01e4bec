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
    eff = effective([a, b], frozenset({"agents", "sales"}), "sales")
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


def test_groups_match_by_dn_not_cn():
    """A policy bound to one cc-agents does not apply to members of a cc-agents elsewhere."""
    from controlplane.domain.groups import group_ref
    from controlplane.domain.policy_load import to_policy

    real = "CN=cc-agents,OU=Agents,DC=corp,DC=example"
    p = to_policy({"name": "a", "bind": {"groups": [real]}, "apps": {"allow": ["crm"]}})
    rogue = frozenset({group_ref("CN=cc-agents,OU=Rogue,DC=corp,DC=example")})
    assert effective([p], rogue, "sales").applied == (DEFAULT.name,)
    same = frozenset({group_ref(" cn=CC-AGENTS, ou=agents,dc=corp,dc=example")})
    assert effective([p], same, "sales").apps == {"crm"}


def test_a_stored_bare_name_matches_nothing():
    """Revisions applied before DN matching may hold bare names: they fail closed."""
    from controlplane.domain.policy_load import to_policy

    p = to_policy({"name": "old", "bind": {"groups": ["cc-agents"]}, "apps": {"allow": ["crm"]}})
    assert p.groups == frozenset() and not p.applies(frozenset({"cc-agents"}), None)
