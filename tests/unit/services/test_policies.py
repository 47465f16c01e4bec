"""Policy files: validation that names file, line and field; atomic versioned apply; rollback; explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.domain.policy_load import MAX_FILE_BYTES
from controlplane.domain.policy_schema import SCHEMA
from controlplane.errors import InvalidInput, NotFound
from controlplane.services import policies
from controlplane.services.policies import PolicyFilesInvalid

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}
GOOD = "name: good\nbind:\n  groups: ['CN=cc-agents,OU=Groups,DC=corp,DC=example']\napps:\n  allow: [crm-client]\n"


def errors_of(files):
    with pytest.raises(PolicyFilesInvalid) as e:
        policies.validate(files)
    return [(x.file, x.line, x.field) for x in e.value.errors], " | ".join(map(str, e.value.errors))


def test_examples_are_valid_and_schema_file_is_current():
    assert {p.name for p in policies.validate(EXAMPLES)} == {"all-agents", "sales-floor", "support-desk"}
    assert json.loads((ROOT / "policies" / "schema.json").read_text()) == SCHEMA


@pytest.mark.parametrize("text,where,words", [
    ("name: bad\nbind:\n  groups: [g]\n  colour: red\n", (4, "bind.colour"), "unknown key"),
    ("name: bad\nbind:\n  groups: [g]\nsession:\n  idle_timeout_minutes: 0\n", (5, "session.idle_timeout_minutes"),
     "minimum"),
    ("name: bad\nbind:\n  groups: [g]\ndata:\n  clipboard: maybe\n", (5, "data.clipboard"), "boolean"),
    ("name: Bad Name\nbind:\n  groups: [g]\n", (1, "name"), "wrong shape"),
    ("name: bad\n", (1, "bind"), "required"),
    ("name: bad\nbind:\n  groups: [g]\ndomains:\n  allow: ['*']\n", (5, "domains.allow.0"), "wrong shape"),
    ("name: bad\nbind:\n  groups: [g]\ndomains:\n  allow: [exämple.com]\n", (5, "domains.allow.0"), "wrong shape"),
    ("a: &x [1, 2]\nb: *x\n", (1, "(yaml)"), "anchors"),
    ("x: !!python/object/apply:os.system ['id']\n", (1, "(yaml)"), "explicit tag"),
    ("!!python/name:os.system\n", (1, "(yaml)"), "explicit tag"),
    ("name: bad\nbind:\n  groups: ['CN=cc-s\u0430les,DC=corp,DC=example']\n", (3, "bind.groups.0"), "mixes scripts"),
    ("name: bad\nbind:\n  groups: ['CN=\uff43c-sales,DC=corp,DC=example']\n", (3, "bind.groups.0"), "NFKC"),
    ("name: bad\nbind:\n  groups: [cc-agents]\n", (3, "bind.groups.0"), "bare name matches any group"),
    ("name: bad\nbind:\n  groups: [S-1-5-21-x]\n", (3, "bind.groups.0"), "not a SID"),
    ("name: bad\ndescription: \"evil\u202etxt.exe\"\nbind:\n  groups: [g]\n", (2, "(text)"), "U+202E"),
    ("name: bad\x07\nbind:\n  groups: [g]\n", (1, "(text)"), "U+0007"),
    ("name: bad\nbind: [unclosed\n", (3, "(yaml)"), ""),
    ("", (1, "(file)"), "empty"),
])
def test_bad_files_are_refused_naming_file_line_and_field(text, where, words):
    found, message = errors_of({"p.yaml": text})
    assert ("p.yaml", *where) in found, message
    assert words in message


def test_yaml_bomb_is_refused_fast():
    bomb = "a: &a ['lol','lol']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" \
           "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    found, _ = errors_of({"bomb.yaml": bomb})
    assert found[0][2] == "(yaml)"


def test_oversized_file_and_duplicate_names():
    found, _ = errors_of({"big.yaml": GOOD + "#" * MAX_FILE_BYTES})
    assert found == [("big.yaml", 0, "(file)")]
    found, message = errors_of({"a.yaml": GOOD, "b.yaml": GOOD})
    assert ("b.yaml", 1, "name") in found and "a.yaml" in message


def test_apply_is_atomic_versioned_audited_and_rolls_back(ctx):
    rev1, changes = policies.apply(ctx, EXAMPLES, actor="carol", comment="first")
    assert rev1.id == 1 and {c["change"] for c in changes} == {"added"}
    same, nothing = policies.apply(ctx, EXAMPLES, actor="carol")
    assert same.id == 1 and nothing == []
    broken = dict(EXAMPLES, **{"zz.yaml": "name: zz\nbind: {groups: [g]}\nextra: 1\n"})
    with pytest.raises(PolicyFilesInvalid):
        policies.apply(ctx, broken, actor="carol")
    assert len(policies.history(ctx)) == 1, "an invalid file must change nothing"
    edited = dict(EXAMPLES)
    edited["sales-floor.yaml"] = edited["sales-floor.yaml"].replace("max_session_hours: 9", "max_session_hours: 6")
    del edited["support-desk.yaml"]
    rev2, changes = policies.apply(ctx, edited, actor="carol")
    assert rev2.id == 2
    assert {"policy": "support-desk", "change": "removed", "fields": []} in changes
    assert {"field": "session.max_session_hours", "old": 9, "new": 6} in next(
        c for c in changes if c["policy"] == "sales-floor")["fields"]
    rev3, _ = policies.rollback(ctx, 1, actor="carol")
    assert rev3.id == 3 and rev3.rollback_of == 1 and rev3.documents == rev1.documents
    with pytest.raises(NotFound):
        policies.rollback(ctx, 99, actor="carol")
    with session_scope(ctx.engine) as session:
        events = audit.list_recent(session=session)
    assert [e.action for e in events if e.action.startswith("policy.")] == \
        ["policy.rollback", "policy.apply", "policy.apply"]
    assert all(e.actor == "carol" for e in events if e.action.startswith("policy."))


def test_explain_uses_the_directory_and_current_revision(ctx):
    policies.apply(ctx, EXAMPLES, actor="carol")
    alice = policies.explain(ctx, "alice", "sales")
    assert alice["applied"] == ["all-agents", "sales-floor"] and alice["revision"] == 1
    assert alice["session"]["max_session_hours"] == 9 and alice["data"]["audio"] is True
    assert "firefox-esr" in alice["apps"] and "knowledge-base" not in alice["apps"]
    bob = policies.explain(ctx, "bob", None)
    assert bob["applied"] == ["all-agents", "support-desk"] and bob["data"]["printing"] is False
    with pytest.raises(NotFound):
        policies.explain(ctx, "nobody")


def test_explain_says_which_rule_of_which_policy_decides_a_name_or_an_app(ctx):
    policies.apply(ctx, EXAMPLES, actor="carol")
    crm = policies.explain(ctx, "alice", "sales", name="CRM.brand.example.")["name"]
    assert crm["subject"] == "crm.brand.example" and crm["allowed"] and not crm["refused_by"]
    assert crm["by_policy"]["all-agents"] == "*.brand.example"
    bare = policies.explain(ctx, "alice", "sales", name="brand.example")["name"]
    assert not bare["allowed"] and set(bare["refused_by"]) == {"all-agents", "sales-floor"}
    kb = policies.explain(ctx, "alice", "sales", app="/usr/bin/knowledge-base")["app"]
    assert kb["subject"] == "knowledge-base" and not kb["allowed"] and list(kb["refused_by"]) == ["sales-floor"]
    assert kb["by_policy"] == {"all-agents": "apps.allow: knowledge-base", "sales-floor": "not in apps.allow"}
    with pytest.raises(InvalidInput, match="name"):
        policies.explain(ctx, "alice", "sales", name="crm brand;example")


def test_one_policy_at_a_time_keeps_the_others_and_reads_back_as_written(ctx):
    policies.apply(ctx, EXAMPLES, actor="alice")
    text = "# the night shift\n" + GOOD.replace("name: good", "name: night")
    rev, changes = policies.put(ctx, "night", text, actor="bob")
    _, docs = policies.current_documents(ctx)
    assert set(docs) == {"all-agents", "sales-floor", "support-desk", "night"}
    assert policies.source(ctx, "night") == (rev.id, text)  # comments and all
    assert [c["policy"] for c in changes] == ["night"]
    assert policies.put(ctx, "night", text, actor="bob") == (rev, [])  # unchanged: no revision
    with pytest.raises(Exception, match="already exists"):
        policies.put(ctx, "night", text, actor="bob", create=True)
    with pytest.raises(InvalidInput, match="names 'night'") as e:
        policies.put(ctx, "day", text, actor="bob")
    assert e.value.field == "name"
    policies.remove(ctx, "night", actor="bob")
    assert set(policies.current_documents(ctx)[1]) == {"all-agents", "sales-floor", "support-desk"}
    with pytest.raises(NotFound):
        policies.remove(ctx, "night", actor="bob")
    rev, _ = policies.rollback(ctx, rev.id, actor="carol")  # the rollback brings its text back too
    assert policies.source(ctx, "night")[1] == text


def test_parallel_writers_of_different_policies_lose_nothing(ctx):
    """Terraform writes its policies in parallel (10 at a time by default): each write is a new
    revision made from the current one, so none may be based on a revision another just replaced."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"team-{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: policies.put(ctx, n, GOOD.replace("name: good", f"name: {n}"), actor=n), names))
    _, docs = policies.current_documents(ctx)
    assert set(docs) == set(names)
    assert [r.id for r in policies.history(ctx)] == list(range(8, 0, -1))


def test_the_policies_in_force_are_parsed_once_per_revision_and_follow_each_apply(ctx, monkeypatch):
    """Every placement step asks for the policies in force: a revision's documents are parsed
    once (revisions never change), and an apply or a rollback is seen at once."""
    parsed: list[str] = []
    to_policy = policies.to_policy
    monkeypatch.setattr(policies, "_PARSED", {})  # what other tests' databases held
    monkeypatch.setattr(policies, "to_policy", lambda doc: parsed.append(doc["name"]) or to_policy(doc))
    assert policies.active(ctx) == []
    policies.apply(ctx, {"good.yaml": GOOD}, actor="carol")
    assert [p.name for p in policies.active(ctx)] == ["good"] == [p.name for p in policies.active(ctx)]
    assert parsed == ["good"]
    policies.apply(ctx, {"good.yaml": GOOD.replace("crm-client", "calculator")}, actor="carol")
    assert [p.apps for p in policies.active(ctx)] == [frozenset({"calculator"})]
    policies.rollback(ctx, 1, actor="carol")  # the same documents as revision 1: parsed already
    assert [p.apps for p in policies.active(ctx)] == [frozenset({"crm-client"})]
    assert parsed == ["good", "good"]
