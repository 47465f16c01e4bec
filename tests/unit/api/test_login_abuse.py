"""Sign-in abuse through the API: throttled answers are 429 with Retry-After, unknown and known
users are throttled alike, and a flood of refusals writes a bounded number of audit rows."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.main import create_app
from tests.conftest import USERS


@pytest.fixture
def app(ctx, settings):
    with TestClient(create_app(settings, ctx)) as c:
        yield c


def attempt(app, user, password="Wrong-pw-0000"):
    return app.post("/api/v1/auth/login", json={"username": user, "password": password})


def rows(ctx, action):
    with session_scope(ctx.engine) as session:
        return audit.list_recent(session=session, action=action, limit=10_000)


@pytest.mark.parametrize("user", ["alice", "nobody-here"])
def test_repeated_failures_get_429_with_retry_after(app, user):
    codes = [attempt(app, user).status_code for _ in range(12)]
    assert codes[:3] == [401, 401, 401]
    r = attempt(app, user)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["detail"] == "too many failed sign-ins; try again later"


def test_throttled_even_with_the_right_password_then_free_after_waiting(app, clock):
    for _ in range(6):
        attempt(app, "alice")
    r = attempt(app, "alice", USERS["alice"][0])
    assert r.status_code == 429, "a throttled attempt never reaches AD, right password or not"
    clock.advance(int(r.headers["retry-after"]) + 1)
    assert attempt(app, "alice", USERS["alice"][0]).status_code == 200


def test_a_flood_of_refusals_writes_few_audit_rows(app, ctx):
    for _ in range(300):
        attempt(app, "alice")
    trail = rows(ctx, "auth.login_failed") + rows(ctx, "auth.login_throttled")
    assert len(trail) <= 20, f"{len(trail)} audit rows for one user and address"
    counts = [e.detail.get("count") for e in rows(ctx, "auth.login_throttled")]
    assert max(counts) >= 256, "the rows carry how many attempts they stand for"


def test_a_flood_of_distinct_names_from_one_address_writes_few_rows(app, ctx):
    for i in range(400):
        attempt(app, f"spray{i}")
    trail = rows(ctx, "auth.login_failed") + rows(ctx, "auth.login_throttled")
    assert len(trail) <= 60
