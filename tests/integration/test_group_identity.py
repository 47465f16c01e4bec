"""Group identity against the real (Samba) AD: a group is who it is by DN or objectSid, never
by its cn. Anyone with create rights in some OU can make a group called `cc-admins`; putting
a user in it must grant nothing."""

from __future__ import annotations

import contextlib

import ldap3
import pytest
from fastapi.testclient import TestClient

from controlplane.config import Settings
from controlplane.domain.groups import group_ref
from controlplane.main import build_context, create_app
from controlplane.services import images, pools
from tests.conftest import FakeBuilder


@pytest.fixture
def rogue(ad):
    """An OU elsewhere holding same-cn copies of every ShiftDesk group, with alice in each."""
    conn = ad.dc.connect()
    ou = ad.dc.add_ou(conn, "Rogue")
    made = []
    for cn in ("cc-admins", "cc-support"):  # sAMAccountName is unique in a domain; cn is not
        made.append(f"CN={cn},{ou}")
        conn.add(made[-1], ["top", "group"], {"cn": cn, "sAMAccountName": f"rogue-{cn}",
                                              "groupType": -2147483646, "member": [ad.dns["alice"]]})
    conn.unbind()
    yield made
    conn = ad.dc.connect()
    for dn in [*made, ou]:
        with contextlib.suppress(ldap3.core.exceptions.LDAPException):
            conn.delete(dn)
    conn.unbind()


def test_a_same_cn_group_in_another_ou_grants_nothing(ad, rogue, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", instance="adcn", libvirt={"uri": "fake://"},
                        auth={"admin_group": ad.groups["cc-admins"]})
    ctx = build_context(settings, directory=ad.directory)
    ctx.builder = FakeBuilder()
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop", size=0, groups=[ad.groups["cc-agents"]], actor="test")
    pools.create(ctx, name="support", image="busybox-desktop", size=0, groups=[ad.groups["cc-support"]], actor="test")
    with TestClient(create_app(settings, ctx)) as api:
        r = api.post("/api/v1/auth/login", json={"username": "alice", "password": ad.passwords["alice"]})
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "agent", "a rogue cc-admins must not make alice an admin"
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        assert api.get("/api/v1/me/pools", headers=headers).json() == [{"name": "sales"}]
        explained = api.get("/api/v1/me/policy", params={"pool": "support"}, headers=headers)
        assert explained.status_code == 403, "no entitlement to support through the rogue cc-support"
    who = ad.directory.lookup("alice")
    assert {group_ref(dn) for dn in rogue} <= who.groups, "AD does report the rogue groups (by DN)"
    assert group_ref(ad.groups["cc-admins"]) not in who.groups
