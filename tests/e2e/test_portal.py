"""An agent of the Samba test domain signs in in headless Chromium and works on a real desktop:
pixels on the canvas, keys reach the VM, clipboard never does, headers are strict, and replayed,
expired and foreign tickets are refused by the gateway."""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from dataclasses import replace

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from controlplane.domain.groups import group_ref
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import create_app, tls_files
from controlplane.services import audit, pools
from controlplane.services.reconciler import Reconciler
from tests.e2e.conftest import Server
from tests.integration.test_gateway_qemu import UpstreamTap


def canvas_colours(page) -> int:
    from PIL import Image  # noqa: PLC0415 - only the e2e tests need Pillow

    shot = page.locator("#screen canvas").screenshot()
    return len(set(Image.open(io.BytesIO(shot)).convert("RGB").getdata()))


@pytest.fixture
def world(real_ctx, real_settings, golden, ad, tmp_path):
    real_ctx.directory = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                                       bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert))
    real_ctx.auth = replace(real_ctx.auth, admin_group=group_ref(ad.groups["cc-admins"]))
    pools.create(real_ctx, name="floor", image="busybox-desktop", size=2, groups=[ad.groups["cc-agents"]], actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180)
    rec.close()
    hv = real_ctx.hypervisor
    real_socket = hv.vnc_socket
    taps: dict[str, UpstreamTap] = {}

    def tapped(name):
        if name not in taps:
            taps[name] = UpstreamTap(str(real_socket(name)), str(tmp_path / f"{name[-6:]}.tap"))
        return tmp_path / f"{name[-6:]}.tap"

    hv.vnc_socket = tapped
    cert, key = tls_files(real_settings)
    with Server(create_app(real_settings, real_ctx), cert, key) as server:
        server.ctx, server.taps, server.ad, server.ca = real_ctx, taps, ad, cert.parent / "ca.pem"
        yield server


def sign_in(browser, world, user):
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 720})
    page = context.new_page()
    response = page.goto(f"{world.url}/portal/")
    page.fill("#username", user)
    page.fill("#password", world.ad.passwords[user])
    page.click("#login-button")
    return page, response


def test_agent_works_on_a_real_desktop_with_pixels_only(browser, world):
    page, response = sign_in(browser, world, "alice")
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    permissions = headers["permissions-policy"]
    assert "clipboard-read=()" in permissions and "clipboard-write=()" in permissions
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    page.wait_for_selector("#status:has-text('Connected')", timeout=30000)
    page.wait_for_timeout(1500)
    assert canvas_colours(page) > 2, "the canvas shows no desktop"
    watermark = page.locator("#watermark span").first.text_content()
    assert "alice" in watermark and "sd-" in watermark
    page.evaluate("document.getElementById('watermark').remove()")
    page.wait_for_timeout(100)
    assert page.locator("#watermark span").count() == 12, "the page was able to remove the watermark"

    before = page.locator("#screen canvas").screenshot()
    page.locator("#screen canvas").click()
    page.keyboard.type("echo typed-in-chromium")
    page.keyboard.press("Enter")
    changed = False
    for _ in range(20):
        page.wait_for_timeout(250)
        if page.locator("#screen canvas").screenshot() != before:
            changed = True
            break
    assert changed, "typing in the browser did not change the VM's screen"

    page.evaluate("window.__shiftdesk.rfb.clipboardPasteFrom('PASTED-CARD-4111111111111111')")
    page.wait_for_timeout(500)
    upstream = b"".join(bytes(t.sent) for t in world.taps.values())
    assert b"PASTED-CARD" not in upstream, "clipboard text reached the VM"
    assert b"t" in upstream  # while typed keys did
    page.close()  # the session ends: what the filter dropped is audited then, once per kind
    for _ in range(100):
        dropped = audit.recent(world.ctx, action="session.clipboard_dropped", limit=10)
        if dropped:
            break
        time.sleep(0.05)
    assert dropped and dropped[0]["actor"] == "alice" and dropped[0]["detail"]["count"] >= 1


def gateway_refuses(world, token, ticket) -> bool:
    """websockets' asyncio client: its sync one (a reader thread on the same TLS socket) lost the
    upgrade request under load and then waited on that thread for good (replicas.first_update_through_gateway)."""
    return asyncio.run(_refused(world, token, ticket))


async def _refused(world, token, ticket) -> bool:
    ctx = ssl.create_default_context(cafile=str(world.ca))
    try:
        async with ws_connect(f"wss://127.0.0.1:{world.port}/gateway?ticket={ticket}", ssl=ctx,
                              origin=f"https://127.0.0.1:{world.port}",
                              additional_headers={"Cookie": f"sd_session={token}"}, open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            return False
    except (InvalidStatus, ConnectionClosed):
        return True


def test_tickets_replayed_expired_or_foreign_are_refused(world):
    import httpx

    client = httpx.Client(base_url=world.url, verify=str(world.ca))  # the local CA really validates
    tokens = {}
    for user in ("alice", "bob"):
        r = client.post("/api/v1/auth/login", json={"username": user, "password": world.ad.passwords[user]})
        assert "token" in r.json(), r.text
        tokens[user] = r.json()["token"]
    auth = {"Authorization": f"Bearer {tokens['alice']}"}
    ticket = client.post("/api/v1/me/pools/floor/connect", headers=auth).json()["ticket"]
    assert not gateway_refuses(world, tokens["alice"], ticket)  # first use works
    assert gateway_refuses(world, tokens["alice"], ticket)  # replay
    ticket = client.post("/api/v1/me/pools/floor/connect", headers=auth).json()["ticket"]
    assert gateway_refuses(world, tokens["bob"], ticket)  # another user's ticket
    world.ctx.ticket_ttl_s = 1
    ticket = client.post("/api/v1/me/pools/floor/connect", headers=auth).json()["ticket"]
    time.sleep(1.5)
    assert gateway_refuses(world, tokens["alice"], ticket)  # expired


def test_portal_reconnects_to_the_same_desktop_after_a_drop(browser, world):
    page, _ = sign_in(browser, world, "alice")
    page.wait_for_selector("#status:has-text('Connected')", timeout=30000)
    page.wait_for_timeout(1200)  # the watermark redraws every second
    first = page.locator("#watermark span").first.text_content().split(" · ")[1]
    assert first.startswith("sd-")
    for tap in world.taps.values():
        tap.drop()
    page.wait_for_selector("#status:has-text('reconnecting')", timeout=10000)
    page.wait_for_selector("#status:has-text('Connected')", timeout=30000)
    page.wait_for_timeout(1200)
    assert page.locator("#watermark span").first.text_content().split(" · ")[1] == first
    starts = [e for e in audit.recent(world.ctx, action="session.start", limit=20) if e["actor"] == "alice"]
    assert len(starts) == 2 and {e["target"] for e in starts} == {first}


def test_admin_console_shows_the_capacity_plot(browser, world):
    from controlplane.services import scaling

    roster = ("pool: floor\ntimezone: Europe/Berlin\nmin: 1\nmax: 10\nshifts:\n"
              "  - {name: day, days: [mon, tue, wed, thu, fri], start: \"08:00\", end: \"16:00\", headcount: 4}\n")
    scaling.apply(world.ctx, {"floor.yaml": roster}, actor="test")
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    response = page.goto(f"{world.url}/console/")
    assert response.headers["cache-control"] == "no-store"
    page.fill("#username", "carol")
    page.fill("#password", world.ad.passwords["carol"])
    page.click("button[type=submit]")
    page.wait_for_selector("#pool-rows tr")
    assert "floor" in page.locator("#pool-rows").text_content()
    page.click("#pool-rows button")
    page.wait_for_selector("#plot:not([hidden])")
    page.wait_for_timeout(500)
    assert page.locator("#plot").evaluate("img => img.naturalWidth") > 100
    agent = browser.new_context(ignore_https_errors=True).new_page()
    agent.goto(f"{world.url}/console/")
    agent.fill("#username", "alice")
    agent.fill("#password", world.ad.passwords["alice"])
    agent.click("button[type=submit]")
    agent.wait_for_selector("#error:not([hidden])")
    assert "administrators" in agent.locator("#error").text_content()
