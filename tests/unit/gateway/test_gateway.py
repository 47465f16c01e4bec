"""The gateway end to end in-process: session cookie + ticket in, filtered RFB through, audit out."""

from __future__ import annotations

import struct

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from controlplane.db.engine import session_scope
from controlplane.main import create_app
from controlplane.services import audit, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import SALES, USERS
from tests.transactions import Transactions
from tests.unit.gateway.fake_vnc import FakeVnc

ORIGIN = {"origin": "http://testserver"}


def sales_desktops(ctx, hv, size):
    """A ready pool "sales" of SIZE fake desktops, each with a fake VNC server behind its socket."""
    pools.create(ctx, name="sales", image="busybox-desktop", size=size, groups=[SALES], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    return [FakeVnc(hv.vnc_socket(name)) for name in hv.domains]


@pytest.fixture
def world(ctx, settings, image, hv):
    servers = sales_desktops(ctx, hv, 2)
    hv.root.mkdir(parents=True, exist_ok=True)
    with TestClient(create_app(settings, ctx)) as client:
        client.servers = {s.path.name[:-4]: s for s in servers}
        yield client
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def fake_root(hv, tmp_path):
    hv.root = tmp_path / "run"


def login(c, user):
    r = c.post("/api/v1/auth/login", json={"username": user, "password": USERS[user][0]})
    assert r.status_code == 200
    token = r.json()["token"]
    assert r.cookies.get("sd_session") == token  # the portal's browser gets it as an HttpOnly cookie
    world_cookies_off(c)
    return {"Authorization": f"Bearer {token}"}, {"cookie": f"sd_session={token}"}


def world_cookies_off(c):
    """Tests say explicitly which session cookie each connection carries."""
    c.cookies.clear()


def connect(c, headers, pool="sales"):
    r = c.post(f"/api/v1/me/pools/{pool}/connect", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def rfb_handshake(ws):
    assert ws.receive_bytes() == b"RFB 003.008\n"
    ws.send_bytes(b"RFB 003.008\n")
    assert ws.receive_bytes() == b"\x01\x01"
    ws.send_bytes(b"\x01")
    assert ws.receive_bytes() == b"\0\0\0\0"
    ws.send_bytes(b"\x01")
    init = ws.receive_bytes()
    w, h = struct.unpack(">HH", init[:4])
    name = init[24:]
    return w, h, name


def test_pixels_through_clipboard_never(world, ctx):
    api, cookie = login(world, "alice")
    c = connect(world, api)
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws:
        w, h, name = rfb_handshake(ws)
        assert (w, h) == (64, 48) and name == b"ShiftDesk desktop"
        clip = struct.pack(">Bxxxi", 6, 17) + b"4111 1111 1111 11"
        ws.send_bytes(struct.pack(">BxHi", 2, 1, 0) + clip + struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        update = ws.receive_bytes()
        assert update[:4] == b"\x00\x00\x00\x01" and update.endswith(b"\x42" * 32)
        ws.send_bytes(struct.pack(">BBxxI", 4, 1, 0x61) + struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
        assert ws.receive_bytes()[:4] == b"\x00\x00\x00\x01"  # the key went first, then this request
        ws.close()  # the browser goes away (a tab closed)
        import time

        for _ in range(100):  # let the gateway see it before the test client tears the app down
            if audit.recent(ctx, action="session.end", limit=1):
                break
            time.sleep(0.02)
    server = world.servers[c["desktop"]]
    import time

    assert 6 not in server.types and b"4111" not in server.received
    assert server.types == [0, 2, 3, 4, 3]  # the gateway's pixel format, then only what the filter allows
    actions = {e["action"]: e for e in audit.recent(ctx, limit=200)}
    assert actions["session.clipboard_dropped"]["detail"] | {} == {"direction": "client", "extended": False,
                                                                  "count": 1, "bytes": 8 + 17}
    for _ in range(50):
        actions = {e["action"]: e for e in audit.recent(ctx, limit=200)}
        if "session.end" in actions:
            break
        time.sleep(0.05)
    assert actions["session.start"]["actor"] == "alice"
    end = actions["session.end"]["detail"]
    assert end["reason"] == "browser closed" and end["bytes_to_browser"] > 32 and end["bytes_from_browser"] > 30


def refused(world, path, headers):
    with pytest.raises(WebSocketDisconnect) as e, world.websocket_connect(path, headers=headers) as ws:
        ws.receive_bytes()
    return e.value.code


def test_replayed_expired_foreign_and_missing_tickets_are_refused(world, clock, ctx):
    api, cookie = login(world, "alice")
    _, bob_cookie = login(world, "bob")
    c = connect(world, api)
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws:
        rfb_handshake(ws)
    assert refused(world, f"/gateway?ticket={c['ticket']}", {**ORIGIN, **cookie}) == 1008  # replay
    c = connect(world, api)
    assert refused(world, f"/gateway?ticket={c['ticket']}", {**ORIGIN, **bob_cookie}) == 1008  # another user's
    c = connect(world, api)
    clock.advance(ctx.ticket_ttl_s + 1)
    api, cookie = login(world, "alice")
    assert refused(world, f"/gateway?ticket={c['ticket']}", {**ORIGIN, **cookie}) == 1008  # expired
    c = connect(world, api)
    assert refused(world, f"/gateway?ticket={c['ticket']}", ORIGIN) == 1008  # no session
    assert refused(world, "/gateway", {**ORIGIN, **cookie}) == 1008  # no ticket
    c = connect(world, api)
    assert refused(world, f"/gateway?ticket={c['ticket']}", {"origin": "https://evil.example", **cookie}) == 1008
    reasons = [e["detail"]["reason"] for e in audit.recent(ctx, action="session.refused", limit=50)]
    assert "origin not allowed" in reasons and "ticket of another user" in reasons


def test_a_gateway_admission_is_one_unit_of_work(world, ctx):
    """The sign-in's check, the ticket, the session rules and the display session: one transaction
    before the first pixel (each was its own: four, plus one more for a refusal's audit)."""
    api, cookie = login(world, "alice")
    c = connect(world, api)
    with Transactions(ctx.engine) as probe, \
            world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws:
        rfb_handshake(ws)
        admission = [probe.of(p) for p in (r"\bFROM api_sessions\b", r"^UPDATE connect_tickets\b",
                                            r"\bFROM policy_revisions\b", r"^INSERT INTO display_sessions\b")]
    assert all(len(txns) == 1 for txns in admission), admission
    assert len(set.union(*admission)) == 1, admission
    _, bob_cookie = login(world, "bob")
    c = connect(world, api)
    with Transactions(ctx.engine) as probe:
        assert refused(world, f"/gateway?ticket={c['ticket']}", {**ORIGIN, **bob_cookie}) == 1008
    assert probe.begun == 1, probe.statements  # the burnt ticket and the refusal's audit


def test_per_user_connection_cap(world, settings):
    api, cookie = login(world, "alice")
    tickets = [connect(world, api)["ticket"] for _ in range(3)]
    with world.websocket_connect(f"/gateway?ticket={tickets[0]}", headers={**ORIGIN, **cookie}) as a:
        rfb_handshake(a)
        with world.websocket_connect(f"/gateway?ticket={tickets[1]}", headers={**ORIGIN, **cookie}) as b:
            rfb_handshake(b)
            assert settings.gateway.max_connections_per_user == 2
            assert refused(world, f"/gateway?ticket={tickets[2]}", {**ORIGIN, **cookie}) == 1008


def test_the_connection_cap_holds_across_replicas(world, settings, ctx):
    """Two replicas (two apps, one database): a session on each is the cap, a third on either is
    refused, and the refusal is audited."""
    api, cookie = login(world, "alice")
    tickets = [connect(world, api)["ticket"] for _ in range(3)]
    with TestClient(create_app(settings, ctx)) as other, \
            world.websocket_connect(f"/gateway?ticket={tickets[0]}", headers={**ORIGIN, **cookie}) as a:
        rfb_handshake(a)
        with other.websocket_connect(f"/gateway?ticket={tickets[1]}", headers={**ORIGIN, **cookie}) as b:
            rfb_handshake(b)
            assert refused(world, f"/gateway?ticket={tickets[2]}", {**ORIGIN, **cookie}) == 1008
    reasons = [e["detail"]["reason"] for e in audit.recent(ctx, action="session.refused", limit=10)]
    assert reasons == ["connection cap"]


@pytest.fixture
def relayed(world, ctx, hv, pki):
    """The desktops as if on another host: reached only through that host's console relay."""
    from controlplane.gateway.console_server import ConsoleServer, client_context, server_context
    from tests.unit.gateway.test_console_server import free_port

    host, cp = pki["server"], pki["control-plane"]
    relay = ConsoleServer(hv.running_socket, server_context(cert=host.cert, key=host.key, ca=host.ca_cert),
                          allowed_clients=frozenset({"shiftdesk-control-plane"}))
    port = free_port()
    relay.run_in_thread("127.0.0.1", port)
    hv.remote = ("127.0.0.1", port)
    tls = client_context(cert=cp / "clientcert.pem", key=cp / "clientkey.pem", ca=cp / "cacert.pem")
    ctx.console_tls = lambda: tls
    return relay


def test_a_desktop_on_another_host_is_reached_through_its_console_relay_behind_the_filter(world, ctx, relayed):
    api, cookie = login(world, "alice")
    c = connect(world, api)
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws:
        w, h, _ = rfb_handshake(ws)
        assert relayed.live == 1  # this session is the relay's console
        clip = struct.pack(">Bxxxi", 6, 17) + b"4111 1111 1111 11"
        ws.send_bytes(struct.pack(">BxHi", 2, 1, 0) + clip + struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        assert ws.receive_bytes()[:4] == b"\x00\x00\x00\x01"
    server = world.servers[c["desktop"]]
    assert server.types == [0, 2, 3] and b"4111" not in server.received  # the filter ran before the relay


def test_without_the_control_planes_certificate_no_console_of_another_host_opens(world, ctx, relayed):
    ctx.console_tls = lambda: None
    api, cookie = login(world, "alice")
    c = connect(world, api)
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws, \
            pytest.raises(WebSocketDisconnect):
        ws.receive_bytes()
    end = wait_for(ctx, "session.drop")
    assert "no client certificate for console relays" in end["detail"]["reason"]
    assert world.servers[c["desktop"]].types == []


def test_filter_violation_ends_the_session_and_is_audited(world, ctx):
    api, cookie = login(world, "alice")
    c = connect(world, api)
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as ws:
        rfb_handshake(ws)
        ws.send_bytes(b"\xfa" + b"\0" * 16)  # xvp power control: never
        with pytest.raises(WebSocketDisconnect):
            ws.receive_bytes()
    import time

    for _ in range(50):
        drops = audit.recent(ctx, action="session.drop", limit=10)
        if drops:
            break
        time.sleep(0.05)
    assert "type 250" in drops[0]["detail"]["reason"]


def open_session(world, user="alice"):
    api, cookie = login(world, user)
    c = connect(world, api)
    ws_cm = world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie})
    return api, c, ws_cm


def wait_for(ctx, action, timeout=5.0):
    if wait_until(lambda: audit.recent(ctx, action=action, limit=1), timeout):
        return audit.recent(ctx, action=action, limit=1)[0]
    recent = [(e["action"], e["detail"]) for e in audit.recent(ctx, limit=6)]
    raise AssertionError(f"no {action} in the audit log: {recent}")


def test_idle_session_is_ended_by_the_watchdog(world, ctx, settings):
    settings.gateway.idle_timeout_s, settings.gateway.watchdog_period_s = 0.4, 0.05
    _, c, ws_cm = open_session(world)
    with ws_cm as ws:
        w, h, _ = rfb_handshake(ws)
        ws.send_bytes(struct.pack(">BxHi", 2, 1, 0))
        import time

        deadline = time.monotonic() + 5
        with pytest.raises(WebSocketDisconnect):
            while time.monotonic() < deadline:  # update requests are not activity: only keys and pointer are
                ws.send_bytes(struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
                ws.receive_bytes()
    assert wait_for(ctx, "session.end")["detail"]["reason"] == "idle timeout"


def test_admin_force_disconnect(world, ctx, settings):
    settings.gateway.watchdog_period_s = 0.05
    _, c, ws_cm = open_session(world)
    carol, _ = login(world, "carol")
    with ws_cm as ws:
        rfb_handshake(ws)
        r = world.post(f"/api/v1/desktops/{c['desktop']}/disconnect", headers=carol)
        assert r.status_code == 200
        with pytest.raises(WebSocketDisconnect):
            for _ in range(100):
                ws.send_bytes(struct.pack(">BBHH", 5, 0, 1, 1))
                ws.receive_bytes()
    assert wait_for(ctx, "session.end")["detail"]["reason"] == "disconnected by an admin"
    assert audit.recent(ctx, action="session.force_disconnect", limit=1)[0]["actor"] == "carol"


def test_grace_keeps_the_desktop_then_recycles_it(world, ctx, clock):
    from controlplane.services import desktops

    api, c, ws_cm = open_session(world)
    with ws_cm as ws:
        rfb_handshake(ws)
        ws.close()
    wait_for(ctx, "session.end")
    row, _ = desktops.get(ctx, c["desktop"])
    assert row.grace_until is not None and row.assigned_to == "alice"
    assert connect(world, api)["desktop"] == c["desktop"]  # back within the grace: the same desktop
    clock.advance(3600)
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    names = {d.name for d, _ in desktops.list_all(ctx)}
    assert c["desktop"] not in names and len(names) == 2  # recycled, and the pool made a fresh one
    assert wait_for(ctx, "desktop.delete")["target"] == c["desktop"]


# --- hardening (issue 8) ------------------------------------------------------------------------

POINTER = struct.pack(">BBHH", 5, 0, 1, 1)


def ends(ctx) -> int:
    """Display sessions the audit log says have ended (cleanly or not)."""
    return len(audit.recent(ctx, action="session.end", limit=50)) + len(audit.recent(ctx, action="session.drop",
                                                                                       limit=50))


def until_closed(ws, ctx, before, moving=True, timeout=15.0):
    """Keep the session busy (pointer events) until the audit log shows more than BEFORE ended
    sessions (count them before the action that should end it). MOVING=False: the pointer never
    moves. Never blocks on a read, so a session that fails to end fails the test in TIMEOUT seconds."""
    import time

    ws.send_bytes(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
    deadline, i = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if ends(ctx) > before:
            return
        ws.send_bytes(struct.pack(">BBHH", 5, 0, 1 + (i % 7 if moving else 0), 1))
        i += 1
        time.sleep(0.02)
    raise AssertionError("the gateway did not end the session")


def wait_until(predicate, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_second_tab_ending_never_starts_the_grace_under_a_live_session(world, ctx, clock, settings):
    from controlplane.services import desktops

    settings.gateway.watchdog_period_s = 0.05
    api, cookie = login(world, "alice")
    c = connect(world, api)
    second = connect(world, api)["ticket"]
    with world.websocket_connect(f"/gateway?ticket={c['ticket']}", headers={**ORIGIN, **cookie}) as old:
        rfb_handshake(old)
        with world.websocket_connect(f"/gateway?ticket={second}", headers={**ORIGIN, **cookie}) as new:
            rfb_handshake(new)
            old.close()  # the older tab (or a half-open socket) ends while the new one is live
            assert wait_for(ctx, "session.end")
            clock.advance(3600)  # far past any grace
            assert wait_until(lambda: desktops.get(ctx, c["desktop"])[0].grace_until > clock.now())
            rec = Reconciler(ctx)
            rec.pass_once()
            rec.close()
            row, _ = desktops.get(ctx, c["desktop"])  # still there, still alice's
            assert row.state == "in_use" and row.assigned_to == "alice"
            new.send_bytes(POINTER)
    wait_until(lambda: len(audit.recent(ctx, action="session.end", limit=5)) == 2)
    row, _ = desktops.get(ctx, c["desktop"])
    assert row.grace_until <= clock.now() + __import__("datetime").timedelta(minutes=60)  # now the grace runs


@pytest.mark.parametrize("message", [b"\xff\x01\x00\x01", struct.pack(">Bxxxi", 6, 0)], ids=["audio", "cut"])
def test_a_flood_of_dropped_messages_closes_the_session_with_one_audit_row_per_kind(world, ctx, settings, message):
    settings.gateway.violation_budget = 300
    _, c, ws_cm = open_session(world)
    with ws_cm as ws:
        rfb_handshake(ws)
        with pytest.raises(WebSocketDisconnect):
            for _ in range(20):
                ws.send_bytes(message * 2000)  # 8-16 KiB frames, thousands of dropped messages each
                ws.receive_bytes()
    drop = wait_for(ctx, "session.drop")
    assert "more than 300 dropped messages" in drop["detail"]["reason"]
    kind = "session.audio_dropped" if message[0] == 255 else "session.clipboard_dropped"
    rows = audit.recent(ctx, action=kind, limit=50)
    assert len(rows) == 1 and rows[0]["detail"]["count"] == 301


def test_a_websocket_message_larger_than_rfb_needs_closes_the_session(world, ctx, settings):
    settings.gateway.max_frame_bytes = 4096
    _, c, ws_cm = open_session(world)
    with ws_cm as ws:
        rfb_handshake(ws)
        with pytest.raises(WebSocketDisconnect):
            ws.send_bytes(POINTER * 1000)  # 6000 bytes in one message
            ws.receive_bytes()
    assert "WebSocket message of 6000 bytes" in wait_for(ctx, "session.drop")["detail"]["reason"]


def rejoin(world, api):
    return world.post("/api/v1/me/pools/sales/connect", headers=api).status_code


@pytest.mark.parametrize("rule", ["idle", "admin"])
def test_idle_timeout_and_admin_disconnect_survive_the_portals_auto_reconnect(world, ctx, settings, rule):
    settings.gateway.watchdog_period_s = 0.05
    if rule == "idle":
        settings.gateway.idle_timeout_s = 0.3
    api, c, ws_cm = open_session(world)
    carol, _ = login(world, "carol")
    with ws_cm as ws:
        rfb_handshake(ws)
        before = ends(ctx)
        if rule == "admin":
            assert world.post(f"/api/v1/desktops/{c['desktop']}/disconnect", headers=carol).status_code == 200
        until_closed(ws, ctx, before, moving=rule != "idle")  # a pointer that does not move is not activity
    reason = wait_for(ctx, "session.end")["detail"]["reason"]
    assert reason == ("idle timeout" if rule == "idle" else "disconnected by an admin")
    assert rejoin(world, api) == 401  # the auto-reconnect's sign-in is gone: a new sign-in is needed
    api, _ = login(world, "alice")
    assert connect(world, api)["desktop"] == c["desktop"]  # and then it is the same desktop


@pytest.mark.parametrize("how", ["revoked", "disabled", "removed from the pool's group"])
def test_revoking_disabling_or_ungrouping_an_agent_ends_their_session(world, ctx, settings, directory, how):
    settings.gateway.watchdog_period_s = 0.05
    api, c, ws_cm = open_session(world)
    carol, _ = login(world, "carol")
    with ws_cm as ws:
        rfb_handshake(ws)
        before = ends(ctx)
        if how == "revoked":
            assert world.post("/api/v1/auth/revoke", json={"username": "alice"}, headers=carol).status_code == 200
        elif how == "disabled":
            directory.disabled.add("alice")
        else:
            directory.users["alice"][1].clear()
        until_closed(ws, ctx, before)
    expected = {"revoked": "sign-in revoked", "disabled": "account disabled or gone in the directory",
                "removed from the pool's group": "no longer entitled to the pool"}[how]
    assert wait_for(ctx, "session.end")["detail"]["reason"] == expected
    assert rejoin(world, api) in (401, 403)


def test_shutdown_tells_live_sessions_and_audits_them(world, ctx):
    import asyncio

    _, c, ws_cm = open_session(world)
    with ws_cm as ws:
        rfb_handshake(ws)
        live = world.app.state.gateway_live
        world.portal.call(live.end_all, 2.0)
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_bytes()
        assert e.value.code == 1001 and not live.tasks
        assert asyncio.iscoroutinefunction(live.end_all)
    assert wait_for(ctx, "session.drop")["detail"]["reason"] == "control plane shutting down"


@pytest.fixture
def served(ctx, settings, image, hv):
    """`shiftdesk serve`'s server (main.build_server) over real HTTPS/WSS, in a thread."""
    import ssl
    import threading

    from controlplane.main import build_server, tls_files
    from tests.e2e.conftest import free_port

    servers = sales_desktops(ctx, hv, 1)
    cert, key = tls_files(settings)
    port = free_port()
    server = build_server(create_app(settings, ctx), settings, host="127.0.0.1", port=port, cert=cert, key=key)
    server.thread = threading.Thread(target=server.run, daemon=True)
    server.thread.start()
    assert wait_until(lambda: server.started)
    server.base, server.ca = f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(cert.parent / "ca.pem"))
    yield server
    server.should_exit = True
    server.thread.join(timeout=15)
    for s in servers:
        s.close()


async def open_live_session(server):
    """Sign in as alice, connect, open the gateway and finish the RFB handshake; the WebSocket."""
    import httpx
    from websockets.asyncio.client import connect as ws_connect

    async with httpx.AsyncClient(base_url=server.base, verify=server.ca) as http:
        r = await http.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][0]})
        token = r.json()["token"]
        r = await http.post("/api/v1/me/pools/sales/connect", headers={"Authorization": f"Bearer {token}"})
    url = server.base.replace("https", "wss") + f"/gateway?ticket={r.json()['ticket']}"
    ws = await ws_connect(url, ssl=server.ca, origin=server.base, additional_headers={"Cookie": f"sd_session={token}"})
    for reply in (b"RFB 003.008\n", b"\x01", b"\x01"):  # the RFB handshake
        await ws.recv()
        await ws.send(reply)
    await ws.recv()  # ServerInit: the session is live
    return ws


def test_sigterm_ends_live_sessions_first_then_the_server_stops(served, ctx):
    """Asked to exit (what its SIGTERM handler does) while an agent is connected, the server tells
    the session (1001), audits it, and stops instead of waiting for the browser to leave."""
    import asyncio

    async def agent() -> int | None:
        ws = await open_live_session(served)
        served.handle_exit(15, None)  # SIGTERM
        try:
            while True:
                await ws.recv()
        except Exception:  # noqa: BLE001 - the close is what we wait for
            return ws.close_code

    assert asyncio.run(agent()) == 1001
    served.thread.join(timeout=15)
    assert not served.thread.is_alive()
    assert wait_for(ctx, "session.drop")["detail"]["reason"] == "control plane shutting down"


def test_no_compression_on_the_gateway_so_a_small_wire_cannot_become_a_big_queue(served):
    """permessage-deflate would let 1 KiB on the wire become megabytes of queued messages (measured:
    a flood of compressed 64 KiB frames queued 111 MiB in the server before the app read one)."""
    import asyncio

    async def agent() -> list:
        ws = await open_live_session(served)  # the client offers permessage-deflate, as browsers do
        try:
            return list(ws.protocol.extensions)
        finally:
            await ws.close()

    assert asyncio.run(agent()) == []


def test_a_hung_directory_never_delays_the_heartbeat_that_holds_the_desktop(world, ctx, settings, directory, clock):
    """The directory answers after 3 s (a DC timing out); heartbeats (every 0.05 s here) go on meanwhile."""
    import time

    from controlplane.services import desktops

    settings.gateway.watchdog_period_s = 0.05
    slow = directory.lookup

    def hung(user):
        time.sleep(3)
        return slow(user)

    directory.lookup = hung
    _, c, ws_cm = open_session(world)
    with ws_cm as ws:
        rfb_handshake(ws)
        time.sleep(0.3)  # the watchdog has asked the directory by now
        clock.advance(3600)
        assert wait_until(lambda: desktops.get(ctx, c["desktop"])[0].grace_until > clock.now(), timeout=1.5)
        ws.close()
    directory.lookup = slow


def test_a_shutdown_keeps_the_agents_hold_on_the_desktop(served, ctx, clock):
    """A restart of the control plane is not the agent leaving: no disconnect grace starts."""
    import asyncio
    from datetime import timedelta

    from controlplane.services import desktops, sessions

    async def agent() -> str:
        ws = await open_live_session(served)
        served.handle_exit(15, None)
        with pytest.raises(Exception):  # noqa: B017 - closed by the server, whichever way
            while True:
                await ws.recv()
        return ws.close_code

    assert asyncio.run(agent()) == 1001
    served.thread.join(timeout=15)
    (row, _), = desktops.list_all(ctx)
    with session_scope(ctx.engine) as session:
        grace = sessions.limits_in(session, groups=frozenset({SALES}), pool="sales").grace_s
    assert row.assigned_to == "alice"
    assert row.grace_until > clock.now() + timedelta(seconds=grace)  # the live hold, not a grace from now
