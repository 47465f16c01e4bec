"""Hostile YAML in policy and roster files: refused as a located field error, never a crash or a
silently different meaning. Every case runs through both loaders, which share safe_yaml."""

from __future__ import annotations

import pytest

from controlplane.domain import policy_load, roster_load
from controlplane.domain.safe_yaml import MAX_DEPTH, DocumentsInvalid

POLICY = "name: good\nbind:\n  groups: [\"CN=cc-agents,OU=Groups,DC=corp,DC=example\"]\n"
ROSTER = ("pool: sales\ntimezone: UTC\nshifts:\n"
          '  - {name: day, days: [mon], start: "08:00", end: "16:00", headcount: 3}\n')
LOADERS = {"policy": (policy_load.load, POLICY), "roster": (roster_load.load, ROSTER)}
DEEP = 10_000


def refused(kind: str, extra: str) -> list[tuple[int, str, str]]:
    """(line, field, message) of every error for the kind's valid file followed by EXTRA."""
    load, good = LOADERS[kind]
    with pytest.raises(DocumentsInvalid) as e:
        load({"f.yaml": good + extra})
    assert all(x.file == "f.yaml" for x in e.value.errors)
    return [(x.line, x.field, x.message) for x in e.value.errors]


def test_the_base_files_are_valid():
    assert policy_load.load({"f.yaml": POLICY}) and roster_load.load({"f.yaml": ROSTER})


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("nest", [
    "[" * DEEP + "]" * DEEP,
    "{a: " * DEEP + "1" + "}" * DEEP,
    "".join("\n" + "  " * i + "- " for i in range(DEEP // 100)) + "x",
])
def test_deep_nesting_is_a_field_error(kind, nest):
    (error,) = refused(kind, "deep: " + nest + "\n")
    line, field, message = error
    assert field.startswith("deep") and f"more than {MAX_DEPTH} levels" in message


@pytest.mark.parametrize("kind", LOADERS)
def test_deep_nesting_at_the_root_is_a_document_error(kind):
    load, _ = LOADERS[kind]
    with pytest.raises(DocumentsInvalid) as e:
        load({"f.yaml": "[" * DEEP + "]" * DEEP})
    assert [(x.line, x.field) for x in e.value.errors] == [(1, ".".join(["0"] * MAX_DEPTH))], str(e.value)


@pytest.mark.parametrize("kind", LOADERS)
def test_duplicate_top_level_key_is_refused_where_it_repeats(kind):
    key = "name: other" if kind == "policy" else "pool: other"
    assert refused(kind, key + "\n") == [(4 if kind == "policy" else 5, key.split(":")[0],
                                           "duplicate key (the last one would silently win)")]


def test_duplicate_nested_keys_are_refused_with_their_path():
    errors = refused("roster", "buffer: {min: 1, percent: 5, min: 9}\n")
    assert [(line, field) for line, field, _ in errors] == [(5, "buffer.min")]
    errors = refused("roster", "events:\n  - {name: a, start: \"2026-01-01T00:00\", end: \"2026-01-01T01:00\","
                               " headcount: 1, headcount: 900}\n")
    assert [(line, field) for line, field, _ in errors] == [(6, "events.0.headcount")]


@pytest.mark.parametrize("extra,field,words", [
    ("<<: {min: 5}\n", "<<", "merge keys"),
    ("? [a, b]\n: 1\n", "(key)", "key must be text"),
    ("1: one\n", "1", "key must be text"),
    ("min: -.inf\n", "min", "not a finite number"),
    ("buffer: {percent: .nan}\n", "buffer.percent", "not a finite number"),  # NaN passes min/max checks
    ("min: " + "9" * 5000 + "\n", "min", "too many digits"),
])
def test_keys_and_numbers_that_would_mean_something_else(extra, field, words):
    errors = refused("roster", extra)
    assert any(f == field and words in m for _, f, m in errors), errors


@pytest.mark.parametrize("kind", LOADERS)
def test_alias_bomb_is_refused(kind):
    bomb = "a: &a ['lol','lol']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    errors = refused(kind, bomb)
    assert any("anchors" in m for _, _, m in errors)


def test_an_unquoted_impossible_date_is_a_field_error():
    errors = refused("roster", "holidays: [2026-02-30]\n")
    assert [(line, field) for line, field, _ in errors] == [(5, "holidays.0")], errors
