"""Verdicts on one name or app: allowed only when every applying policy allows it, with the rule."""

from __future__ import annotations

from controlplane.domain.explain import explain_app, explain_name
from controlplane.domain.policy import DEFAULT, Policy

A = Policy(name="a", groups=frozenset({"g"}), apps=frozenset({"firefox-esr", "galculator"}),
           domains=frozenset({"*.brand.example"}))
B = Policy(name="b", groups=frozenset({"g"}), apps=frozenset({"firefox-esr"}),
           domains=frozenset({"crm.brand.example"}))


def test_a_name_needs_every_policy():
    assert explain_name([A, B], "crm.brand.example").by_policy == {"a": "*.brand.example", "b": "crm.brand.example"}
    kb = explain_name([A, B], "kb.brand.example")
    assert not kb.allowed and kb.refused_by == ("b",)


def test_an_app_is_matched_by_its_name_even_given_a_path():
    assert explain_app([A, B], "/usr/bin/firefox-esr").allowed
    calc = explain_app([A, B], "galculator")
    assert not calc.allowed and calc.by_policy["b"] == "not in apps.allow"


def test_the_default_policy_refuses_everything():
    assert not explain_name([DEFAULT], "crm.brand.example").allowed
    assert not explain_app([DEFAULT], "firefox-esr").allowed
    assert not explain_name([], "crm.brand.example").allowed
