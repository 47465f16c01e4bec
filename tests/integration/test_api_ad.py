"""The API against the real (Samba) AD: roles from nested groups, the authorization matrix,
policy explain from real group membership, and a directory outage."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.config import Settings
from controlplane.domain.groups import group_ref
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import build_context, create_app
from controlplane.services import images, policies, pools
from controlplane.services.context import AuthConfig
from tests.conftest import FakeBuilder
from tests.unit.api.test_authz import ADMIN_ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(ad, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", instance="adapi", libvirt={"uri": "fake://"},
                        auth={"admin_group": ad.groups["cc-admins"]})
    ctx = build_context(settings, directory=ad.directory)
    ctx.builder = FakeBuilder()
    assert ctx.auth.admin_group == group_ref(ad.groups["cc-admins"]) and isinstance(ctx.auth, AuthConfig)
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop", size=0, groups=[ad.groups["cc-agents"]], actor="test")
    pools.create(ctx, name="support", image="busybox-desktop", size=0, groups=[ad.groups["cc-support"]], actor="test")
    policies.apply(ctx, {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}, actor="test")
    with TestClient(create_app(settings, ctx)) as client:
        client.ctx = ctx
        yield client


def login(api, ad, user):
    r = api.post("/api/v1/auth/login", json={"username": user, "password": ad.passwords[user]})
    assert r.status_code == 200, r.text
    return r.json(), {"Authorization": f"Bearer {r.json()['token']}"}


def test_roles_come_from_ad_groups(api, ad):
    carol, _ = login(api, ad, "carol")
    alice, alice_h = login(api, ad, "alice")
    assert carol["role"] == "admin" and alice["role"] == "agent"
    # alice is in cc-agents only through cc-sales-team: nested membership entitles her to "sales"
    assert api.get("/api/v1/me/pools", headers=alice_h).json() == [{"name": "sales"}]
    assert api.get("/api/v1/me/policy?pool=support", headers=alice_h).status_code == 403
    for user in ("dave", "nobody"):
        r = api.post("/api/v1/auth/login", json={"username": user, "password": ad.passwords.get(user, "x-1A!aaaa")})
        assert r.status_code == 401


@pytest.mark.parametrize("method,path,body", ADMIN_ENDPOINTS)
def test_authorization_matrix_with_real_ad(api, ad, method, path, body):
    _, alice = login(api, ad, "alice")
    _, carol = login(api, ad, "carol")
    assert api.request(method, path, json=body).status_code == 401
    assert api.request(method, path, json=body, headers=alice).status_code == 403
    assert api.request(method, path, json=body, headers=carol).status_code not in (401, 403)


def test_explain_follows_real_nested_groups(api, ad):
    _, carol = login(api, ad, "carol")
    alice = api.get("/api/v1/policies/explain", params={"user": "alice", "pool": "sales"}, headers=carol).json()
    assert alice["applied"] == ["all-agents", "sales-floor"]
    assert {group_ref(ad.groups[cn]) for cn in ("cc-agents", "cc-sales-team")} <= set(alice["groups"])
    erin = api.get("/api/v1/policies/explain", params={"user": "erin"}, headers=carol).json()
    assert erin["applied"] == ["all-agents"]


def test_directory_outage_503_while_sessions_continue(api, ad):
    _, alice = login(api, ad, "alice")
    api.ctx.directory = LdapDirectory(url="ldaps://127.0.0.1:6361", base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                                      bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert),
                                      connect_timeout=1)
    r = api.post("/api/v1/auth/login", json={"username": "bob", "password": ad.passwords["bob"]})
    assert r.status_code == 503 and "directory" in r.json()["detail"]
    assert api.get("/api/v1/me/pools", headers=alice).status_code == 200
