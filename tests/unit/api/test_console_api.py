"""What the admin console reads: live sessions with what the gateway saw, the audit log searched
and exported as CSV (itself audited, formulas defused), a desktop's screenshot (audited), and every
pool with its roster in brief."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from controlplane.main import create_app
from controlplane.services import audit, hosts, pools, sessions
from controlplane.services.reconciler import Reconciler
from tests.conftest import AGENTS, USERS, open_session


@pytest.fixture
def api(ctx, settings, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, groups=[AGENTS], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    with TestClient(create_app(settings, ctx)) as c:
        r = c.post("/api/v1/auth/login", json={"username": "carol", "password": USERS["carol"][0]})
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield c


def alice_working(ctx):
    live = open_session(ctx, "sales", source="192.0.2.7")
    return live.desktop, live.display, live.limits


def test_live_sessions_show_who_where_since_and_what_the_gateway_saw(api, ctx, clock):
    desktop, display, limits = alice_working(ctx)
    clock.advance(30)
    sessions.heartbeat(ctx, display, limits=limits, period_s=2,
                       usage=sessions.Usage(bytes_from_browser=1200, bytes_to_browser=987654, idle_s=12.0))
    (s,) = api.get("/api/v1/sessions").json()
    assert (s["user"], s["desktop"], s["pool"], s["source"]) == ("alice", desktop, "sales", "192.0.2.7")
    assert (s["bytes_from_browser"], s["bytes_to_browser"], s["idle_s"]) == (1200, 987654, 12.0)
    clock.advance(60)  # no heartbeat for 30 periods: the gateway is gone, the session is not live
    assert api.get("/api/v1/sessions").json() == []


def test_every_pool_is_listed_with_its_roster_in_brief(api, ctx, clock):
    pools.create(ctx, name="support", image="busybox-desktop", size=0, actor="t")
    assert api.get("/api/v1/schedules").json() == [
        {"pool": pool, "applied_at": None, "actor": None, "timezone": None, "shifts": 0, "events": 0, "holidays": 0}
        for pool in ("sales", "support")]
    roster = ("pool: support\ntimezone: Europe/Berlin\nshifts:\n"
              '  - {name: day, days: [mon], start: "08:00", end: "16:00", headcount: 3}\n'
              '  - {name: night, days: [mon], start: "16:00", end: "08:00", headcount: 1}\n'
              'holidays: ["2026-12-25"]\n')
    r = api.post("/api/v1/schedules/apply", json={"files": {"support.yaml": roster}})
    assert r.json()["changed"] == ["support"]
    sales, support = api.get("/api/v1/schedules").json()
    assert sales["pool"] == "sales" and sales["applied_at"] is None
    assert datetime.fromisoformat(support.pop("applied_at")) == clock.now()
    assert support == {"pool": "support", "actor": "carol", "timezone": "Europe/Berlin", "shifts": 2, "events": 0,
                       "holidays": 1}


def test_hosts_show_what_they_have_what_desktops_take_and_whether_they_answer(api, ctx, hv):
    hosts = api.get("/api/v1/hosts").json()
    assert [(h["id"], h["state"], h["reason"]) for h in hosts] == [(ctx.host_id, "active", None)]
    (host,) = hosts
    assert host["capacity"] == {"vcpus": 8, "memory_mib": 32768, "disk_bytes": 500 << 30,
                                "disk_free_bytes": 400 << 30}
    assert (host["committed_vcpus"], host["committed_memory_mib"]) == (2, 512)  # two desktops of 1 vCPU, 256 MiB
    assert host["desktops"] == {"ready": 2}
    hv.unreachable = True  # libvirtd stops answering: the host is down, and the console says why
    (down,) = api.get("/api/v1/hosts").json()
    assert down["state"] == "down" and "not answering" in down["reason"] and down["capacity"] is None
    assert down["desktops"] == {"ready": 2}  # what the database knows stays visible


def test_hosts_are_registered_and_moved_in_and_out_of_maintenance(api, ctx):
    r = api.post("/api/v1/hosts", json={"name": "host-b", "uri": "fake://host-b"})
    assert r.status_code == 201 and (r.json()["mode"], r.json()["state"]) == ("active", "active")
    for body, field in [({"name": "host-c", "uri": "ftp://x"}, "uri"), ({"name": "Host C", "uri": "fake://c"}, "name"),
                        ({"name": "host-b", "uri": "fake://other"}, "name")]:
        refused = api.post("/api/v1/hosts", json=body)
        assert refused.status_code in (409, 422) and refused.json()["field"] == field, refused.json()
    bad = api.patch("/api/v1/hosts/host-b", json={"mode": "asleep"})
    assert bad.status_code == 422 and bad.json()["field"] == "mode"
    assert api.patch("/api/v1/hosts/host-b", json={"mode": "maintenance"}).json()["mode"] == "maintenance"
    assert api.patch("/api/v1/hosts/nowhere", json={"mode": "active"}).status_code == 404
    own = next(h.name for h in hosts.views(ctx) if h.id == ctx.host_id)
    assert [h["name"] for h in api.get("/api/v1/hosts").json()] == sorted([own, "host-b"])
    assert [e["actor"] for e in audit.recent(ctx, action="host.")] == ["carol", "carol"]


def test_agents_see_no_sessions_and_no_screens(api, ctx):
    desktop, _, _ = alice_working(ctx)
    r = api.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][0]})
    agent = {"Authorization": f"Bearer {r.json()['token']}"}
    assert api.get("/api/v1/sessions", headers=agent).status_code == 403
    assert api.get(f"/api/v1/desktops/{desktop}/screenshot", headers=agent).status_code == 403
    assert api.get("/api/v1/audit/export.csv", headers=agent).status_code == 403
    assert api.get("/api/v1/schedules", headers=agent).status_code == 403
    assert api.get("/api/v1/hosts", headers=agent).status_code == 403


def test_a_screenshot_is_a_png_and_every_look_is_audited(api, ctx):
    desktop, _, _ = alice_working(ctx)
    r = api.get(f"/api/v1/desktops/{desktop}/screenshot")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert r.headers["cache-control"] == "no-store"
    (look,) = api.get("/api/v1/audit", params={"action": "desktop.screenshot"}).json()
    assert (look["actor"], look["target"], look["detail"]["user"]) == ("carol", desktop, "alice")
    assert api.get("/api/v1/desktops/sd-unit-none-000000/screenshot").status_code == 404


def test_audit_search_by_who_family_target_and_time(api, ctx, clock):
    desktop, display, limits = alice_working(ctx)
    api.post(f"/api/v1/desktops/{desktop}/disconnect")
    everything = api.get("/api/v1/audit", params={"limit": 1000}).json()
    by_carol = api.get("/api/v1/audit", params={"actor": "carol"}).json()
    assert by_carol and all(e["actor"] == "carol" for e in by_carol)
    family = api.get("/api/v1/audit", params={"action": "session."}).json()
    assert family and all(e["action"].startswith("session.") for e in family)
    on_desktop = api.get("/api/v1/audit", params={"target": desktop, "actor": "carol"}).json()
    assert on_desktop and all(e["target"] == desktop and e["actor"] == "carol" for e in on_desktop)
    now = datetime.now(UTC)  # the log's own time
    assert api.get("/api/v1/audit", params={"since": (now + timedelta(minutes=1)).isoformat()}).json() == []
    assert len(api.get("/api/v1/audit", params={"until": (now + timedelta(minutes=1)).isoformat(),
                                                "limit": 1000}).json()) == len(everything)
    assert api.get("/api/v1/audit", params={"since": "yesterday"}).status_code == 422


def test_the_csv_export_is_audited_and_defuses_formulas(api, ctx):
    r = api.post("/api/v1/auth/login", json={"username": "=HYPERLINK(\"http://evil\")", "password": "x"})
    assert r.status_code == 401  # a failed sign-in writes the name it was given into the log
    r = api.get("/api/v1/audit/export.csv", params={"action": "auth.login_failed"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "at", "actor", "action", "target", "detail"]
    assert len(rows) > 1 and all(not cell.startswith("=") for line in rows for cell in line)
    (export,) = api.get("/api/v1/audit", params={"action": "audit.export"}).json()
    assert export["actor"] == "carol" and export["detail"]["rows"] == len(rows) - 1

