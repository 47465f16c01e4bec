"""A live display session against the real (Samba) AD: disabling the agent, or taking them out of
the pool's group, ends the session within a watchdog period and refuses the reconnect."""

from __future__ import annotations

import secrets
import struct
import time

import ldap3
import pytest
from fastapi.testclient import TestClient

from controlplane.config import Settings
from controlplane.drivers.fake import FakeHypervisor
from controlplane.main import build_context, create_app
from controlplane.services import audit, images, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import FakeBuilder
from tests.unit.gateway.fake_vnc import FakeVnc
from tests.unit.gateway.test_gateway import ORIGIN, ends, rfb_handshake, until_closed


@pytest.fixture
def agent(ad):
    """A fresh agent in cc-sales-team (so in cc-agents), removed afterwards: the DC is shared."""
    name, password = f"gina{secrets.token_hex(2)}", "Gina-Pass-1234!"
    conn = ad.dc.connect()
    dn = ad.dc.add_user(conn, ad.users_ou, name, password)
    conn.modify(ad.groups["cc-sales-team"], {"member": [(ldap3.MODIFY_ADD, [dn])]})
    yield name, password, dn, conn
    conn.delete(dn)
    conn.unbind()


@pytest.fixture
def gateway(ad, tmp_path):
    hv = FakeHypervisor(root=tmp_path / "run")
    settings = Settings(data_dir=tmp_path / "data", instance="adgw", libvirt={"uri": "fake://"},
                        gateway={"watchdog_period_s": 0.2})
    ctx = build_context(settings, hypervisor=hv, directory=ad.directory)
    ctx.builder = FakeBuilder()
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, groups=[ad.groups["cc-agents"]], actor="test")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    servers = [FakeVnc(hv.vnc_socket(name)) for name in hv.domains]
    with TestClient(create_app(settings, ctx)) as client:
        client.ctx = ctx
        yield client
    for s in servers:
        s.close()


def end_reason(ctx, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = audit.recent(ctx, action="session.end", limit=1)
        if ends:
            return ends[0]["detail"]["reason"]
        time.sleep(0.05)
    raise AssertionError("the session did not end")


@pytest.mark.parametrize("change", ["disabled", "removed from the group"])
def test_ad_changes_end_a_live_session_and_refuse_the_reconnect(gateway, ad, agent, change):
    name, password, dn, conn = agent
    r = gateway.post("/api/v1/auth/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    bearer, cookie = {"Authorization": f"Bearer {token}"}, {"cookie": f"sd_session={token}"}
    ticket = gateway.post("/api/v1/me/pools/sales/connect", headers=bearer).json()["ticket"]
    gateway.cookies.clear()
    with gateway.websocket_connect(f"/gateway?ticket={ticket}", headers={**ORIGIN, **cookie}) as ws:
        rfb_handshake(ws)
        ws.send_bytes(struct.pack(">BBHH", 5, 0, 3, 3))
        before = ends(gateway.ctx)
        if change == "disabled":
            conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [0x202])]})
        else:
            conn.modify(ad.groups["cc-sales-team"], {"member": [(ldap3.MODIFY_DELETE, [dn])]})
        until_closed(ws, gateway.ctx, before)
    expected = "account disabled or gone in the directory" if change == "disabled" else "no longer entitled to the pool"
    assert end_reason(gateway.ctx) == expected
    assert gateway.post("/api/v1/me/pools/sales/connect", headers=bearer).status_code in (401, 403)
