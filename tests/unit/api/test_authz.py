"""The whole authorization matrix: every admin endpoint refuses agents and anonymous callers,
every agent endpoint refuses other agents' objects, and sessions end when they should."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.main import create_app
from controlplane.services import pools
from tests.conftest import AGENTS, SALES, USERS

ADMIN_ENDPOINTS = [
    ("GET", "/api/v1/images", None),
    ("POST", "/api/v1/images", {"recipe": "busybox-desktop"}),
    ("GET", "/api/v1/images/busybox-desktop", None),
    ("POST", "/api/v1/images/busybox-desktop/deprecate", None),
    ("DELETE", "/api/v1/images/busybox-desktop:1", None),
    ("GET", "/api/v1/pools", None),
    ("POST", "/api/v1/pools", {"name": "other", "image": "busybox-desktop", "size": 0}),
    ("GET", "/api/v1/pools/sales", None),
    ("PATCH", "/api/v1/pools/sales", {"size": 3}),
    ("DELETE", "/api/v1/pools/sales", None),
    ("GET", "/api/v1/desktops", None),
    ("GET", "/api/v1/desktops/x", None),
    ("POST", "/api/v1/desktops/x/reboot", None),
    ("POST", "/api/v1/desktops/x/rebuild", None),
    ("DELETE", "/api/v1/desktops/x", None),
    ("GET", "/api/v1/policies", None),
    ("GET", "/api/v1/policies/schema", None),
    ("POST", "/api/v1/policies/validate", {"files": {}}),
    ("POST", "/api/v1/policies/diff", {"files": {}}),
    ("POST", "/api/v1/policies/apply", {"files": {}}),
    ("GET", "/api/v1/policies/revisions", None),
    ("POST", "/api/v1/policies/rollback", {"revision": 1}),
    ("GET", "/api/v1/policies/explain?user=alice", None),
    ("POST", "/api/v1/auth/revoke", {"username": "alice"}),
    ("GET", "/api/v1/audit", None),
    ("POST", "/api/v1/desktops/x/release", None),
]


@pytest.fixture
def app(ctx, settings, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=0, groups=[SALES], actor="t")
    # another spelling of SUPPORT's DN: case and spaces around separators do not matter
    pools.create(ctx, name="support", image="busybox-desktop", size=0,
                 groups=["cn=CC-Support , OU=agents,ou=ShiftDesk,DC=ShiftDesk,dc=test"], actor="t")
    with TestClient(create_app(settings, ctx)) as c:
        yield c


def login(c, user, password=None):
    r = c.post("/api/v1/auth/login", json={"username": user, "password": password or USERS[user][0]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def call(c, method, path, body, headers):
    return c.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method,path,body", ADMIN_ENDPOINTS)
def test_admin_endpoints_refuse_anonymous_and_agents(app, method, path, body):
    assert call(app, method, path, body, {}).status_code == 401
    assert call(app, method, path, body, {"Authorization": "Bearer nonsense.token"}).status_code == 401
    assert call(app, method, path, body, login(app, "alice")).status_code == 403
    assert call(app, method, path, body, login(app, "carol")).status_code not in (401, 403)


@pytest.mark.parametrize("path", ["/api/v1/me", "/api/v1/me/pools", "/api/v1/me/policy?pool=sales"])
def test_agent_endpoints_need_a_session(app, path):
    assert app.get(path).status_code == 401
    assert app.post("/api/v1/me/pools/sales/connect").status_code == 401


def test_agents_connect_only_to_their_pools(app):
    alice = login(app, "alice")
    assert app.post("/api/v1/me/pools/support/connect", headers=alice).status_code == 403
    r = app.post("/api/v1/me/pools/sales/connect", headers=alice)
    assert r.status_code == 503 and r.headers["retry-after"]  # entitled, but the pool has no desktop yet


def test_agents_see_only_their_pools_and_policies(app):
    alice, bob = login(app, "alice"), login(app, "bob")
    assert app.get("/api/v1/me/pools", headers=alice).json() == [{"name": "sales"}]
    assert app.get("/api/v1/me/pools", headers=bob).json() == [{"name": "support"}]
    assert app.get("/api/v1/me/policy?pool=sales", headers=alice).status_code == 200
    assert app.get("/api/v1/me/policy?pool=support", headers=alice).status_code == 403
    assert app.get("/api/v1/me/policy?pool=sales", headers=bob).status_code == 403
    assert app.get("/api/v1/me/policy?pool=nonexistent", headers=bob).status_code == 403
    me = app.get("/api/v1/me", headers=alice).json()
    assert me["username"] == "alice" and me["role"] == "agent"
    assert me["groups"] == [SALES], "the token carries only groups the configuration names (AGENTS is unused)"
    assert AGENTS in USERS["alice"][1]


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("alice", ""), ("alice", "   "), ("dave", None),
                                           ("nobody", "x"), ("*", "x")])
def test_refused_logins_are_401_and_audited(app, ctx, user, password):
    if password is None:
        password = USERS[user][0]  # the right password: refused all the same (disabled account)
    r = app.post("/api/v1/auth/login", json={"username": user, "password": password})
    assert r.status_code == 401 and r.json()["detail"] == "invalid username or password"
    from controlplane.db import audit
    from controlplane.db.engine import session_scope

    with session_scope(ctx.engine) as session:
        assert audit.list_recent(session=session, action="auth.login_failed")


def test_logout_revoke_and_expiry_end_sessions(app, clock, ctx):
    alice = login(app, "alice")
    assert app.post("/api/v1/auth/logout", headers=alice).status_code == 204
    assert app.get("/api/v1/me", headers=alice).status_code == 401
    alice = login(app, "alice")
    carol = login(app, "carol")
    assert app.post("/api/v1/auth/revoke", json={"username": "alice"}, headers=carol).json() == {"revoked": 1}
    assert app.get("/api/v1/me", headers=alice).status_code == 401
    bob = login(app, "bob")
    clock.advance(ctx.auth.ttl_s + 1)
    assert app.get("/api/v1/me", headers=bob).status_code == 401


def test_tampered_token_is_refused(app):
    token = login(app, "alice")["Authorization"].split()[1]
    payload, sig = token.split(".")
    import base64
    import json

    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    assert app.get("/api/v1/pools", headers={"Authorization": f"Bearer {forged}.{sig}"}).status_code == 401


def test_directory_down_gives_503_on_login_but_sessions_continue(app, directory):
    alice = login(app, "alice")
    directory.down = True
    r = app.post("/api/v1/auth/login", json={"username": "bob", "password": USERS["bob"][0]})
    assert r.status_code == 503
    assert app.get("/api/v1/me", headers=alice).status_code == 200
    assert app.get("/api/v1/me/policy?pool=sales", headers=alice).status_code == 200


def test_passwords_and_tokens_never_reach_logs_or_audit(app, ctx, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    app.post("/api/v1/auth/login", json={"username": "alice", "password": "Wrong-Secret-987"})
    headers = login(app, "alice")
    token = headers["Authorization"].split()[1]
    app.get("/api/v1/me", headers=headers)
    from controlplane.db import audit
    from controlplane.db.engine import session_scope

    with session_scope(ctx.engine) as session:
        trail = repr([(e.action, e.detail) for e in audit.list_recent(session=session, limit=1000)])
    for secret in ("Wrong-Secret-987", USERS["alice"][0], token, token.split(".")[1]):
        assert secret not in caplog.text and secret not in trail


def test_a_same_cn_group_elsewhere_grants_nothing(app, ctx, directory):
    """mallory is in groups called shiftdesk-admins and cc-sales-team, but in another OU."""
    rogue = {f"CN={cn},OU=Rogue,DC=corp,DC=example" for cn in ("shiftdesk-admins", "cc-sales-team", "cc-agents")}
    directory.users["mallory"] = ("Mallory-pw-1234", rogue)
    r = app.post("/api/v1/auth/login", json={"username": "mallory", "password": "Mallory-pw-1234"})
    assert r.status_code == 200 and r.json()["role"] == "agent"
    mallory = {"Authorization": f"Bearer {r.json()['token']}"}
    assert app.get("/api/v1/me/pools", headers=mallory).json() == []
    assert app.get("/api/v1/me", headers=mallory).json()["groups"] == []


@pytest.mark.parametrize("groups", [["cc-sales-team"], ["CN=cc-sales-team"], ["S-1-5-21-x"]])
def test_pools_refuse_groups_named_by_bare_name(app, groups):
    carol = login(app, "carol")
    r = app.post("/api/v1/pools", json={"name": "other", "image": "busybox-desktop", "size": 0, "groups": groups},
                 headers=carol)
    assert r.status_code == 422 and r.json()["field"] == "groups.0"
