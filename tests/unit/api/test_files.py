"""Policy and roster files over HTTP: hostile YAML is a 422 naming file, line and field, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.api.deps import current_admin
from controlplane.main import create_app
from controlplane.services import identity
from controlplane.services.tokens import Claims

DEEP = 10_000
POLICY = 'name: good\nbind:\n  groups: ["CN=cc-agents,OU=Groups,DC=corp,DC=example"]\n'
ROSTER = ("pool: sales\ntimezone: UTC\nshifts:\n"
          '  - {name: day, days: [mon], start: "08:00", end: "16:00", headcount: 3}\n')


@pytest.fixture
def client(ctx, settings):
    """An admin client (sign-in is tested elsewhere); a server fault is a 500 here, not an exception."""
    app = create_app(settings, ctx)
    app.dependency_overrides[current_admin] = lambda: Claims("carol", identity.ADMIN, (), "j", 0)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("route,good", [("policies", POLICY), ("schedules", ROSTER)])
@pytest.mark.parametrize("verb", ["validate", "apply"])
@pytest.mark.parametrize("extra,offset,field", [
    ("deep: " + "[" * DEEP + "]" * DEEP + "\n", 1, "deep" + ".0" * 15),
    ("deep: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n", 1, "deep" + ".a" * 15),
    ("name: twice\npool: twice\n", None, None),  # each kind's own key, said twice
])
def test_hostile_yaml_is_a_422_naming_file_line_and_field(client, route, good, verb, extra, offset, field):
    r = client.post(f"/api/v1/{route}/{verb}", json={"files": {"f.yaml": good + extra}})
    assert r.status_code == 422, r.text
    errors = [(e["file"], e["line"], e["field"]) for e in r.json()["errors"]]
    if field is None:
        offset, field = (1, "name") if route == "policies" else (2, "pool")
    assert ("f.yaml", good.count("\n") + offset, field) in errors, errors


@pytest.mark.parametrize("verb", ["validate", "apply"])
def test_an_impossible_date_is_a_422_naming_the_field(client, verb):
    r = client.post(f"/api/v1/schedules/{verb}", json={"files": {"f.yaml": ROSTER + 'holidays: ["2026-02-30"]\n'}})
    assert r.status_code == 422, r.text
    assert [(e["line"], e["field"]) for e in r.json()["errors"]] == [(5, "holidays.0")]
