"""The HTTP API: CRUD over images, pools and desktops; bad input is a 4xx naming the field."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from controlplane.db import audit
from controlplane.db import pools as pools_db
from controlplane.db.engine import session_scope
from controlplane.main import create_app
from controlplane.services.reconciler import Reconciler
from tests.conftest import USERS


@pytest.fixture
def client(ctx, settings):
    with TestClient(create_app(settings, ctx)) as c:
        r = c.post("/api/v1/auth/login", json={"username": "carol", "password": USERS["carol"][0]})
        assert r.status_code == 200 and r.json()["role"] == "admin", r.text
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield c


def settle(ctx):
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()


def test_image_pool_desktop_lifecycle(client, ctx):
    r = client.post("/api/v1/images", json={"recipe": "busybox-desktop"})
    assert r.status_code == 201 and r.json()["version"] == 1
    assert client.post("/api/v1/images", json={"recipe": "busybox-desktop"}).json()["version"] == 1
    r = client.post("/api/v1/pools", json={"name": "sales", "image": "busybox-desktop", "size": 2})
    assert r.status_code == 201, r.text
    settle(ctx)
    pool = client.get("/api/v1/pools/sales").json()
    assert pool["desktops"] == {"ready": 2} and pool["image"] == "busybox-desktop:1"
    desktops = client.get("/api/v1/desktops", params={"pool": "sales"}).json()
    assert len(desktops) == 2 and all(d["state"] == "ready" and d["disk_path"] for d in desktops)
    name = desktops[0]["name"]
    assert client.get(f"/api/v1/desktops/{name}").json()["domain"] == name
    assert client.post(f"/api/v1/desktops/{name}/reboot").json()["state"] == "provisioning"
    assert client.post(f"/api/v1/desktops/{name}/rebuild").json()["generation"] == 2
    settle(ctx)
    assert client.patch("/api/v1/pools/sales", json={"size": 1}).status_code == 200
    settle(ctx)
    assert len(client.get("/api/v1/desktops").json()) == 1
    assert client.delete("/api/v1/images/busybox-desktop:1").status_code == 409
    assert client.delete("/api/v1/pools/sales").status_code == 202
    settle(ctx)
    assert client.get("/api/v1/pools").json() == []
    assert client.post("/api/v1/images/busybox-desktop/deprecate").json()["deprecated"] is True
    assert client.delete("/api/v1/images/busybox-desktop:1").status_code == 204
    assert client.get("/api/v1/images").json() == []
    with session_scope(ctx.engine) as session:
        actions = [e.action for e in audit.list_recent(session=session, limit=500)]
    trail = client.get("/api/v1/audit", params={"limit": 1000}).json()
    assert {e["action"] for e in trail} >= {"auth.login", "pool.create", "image.delete"}
    assert all(e["actor"] == "carol" for e in trail if e["action"] == "pool.create")
    for expected in ("image.register", "pool.create", "pool.scale", "pool.delete", "desktop.reboot",
                     "desktop.rebuild", "image.deprecate", "image.delete", "desktop.ready"):
        assert expected in actions


@pytest.mark.parametrize("body,field", [
    ({"name": "Sales!", "image": "busybox-desktop", "size": 1}, "name"),
    ({"name": "sales", "image": "busybox-desktop", "size": -1}, "size"),
    ({"name": "sales", "image": "busybox-desktop", "size": "2"}, "size"),
    ({"name": "sales", "image": "busybox-desktop", "size": 9, "max_size": 3}, "size"),
    ({"name": "sales", "image": "busybox-desktop", "size": 1, "min_size": 4, "max_size": 3}, "min_size"),
    ({"name": "sales", "image": "nope", "size": 1}, "image"),
    ({"name": "sales", "image": "busybox-desktop", "size": 1, "colour": "red"}, "colour"),
    ({"name": "sales", "image": "busybox-desktop"}, "size"),
    ({"name": "sales", "image": "busybox-desktop", "size": 1, "memory_mib": 1}, "memory_mib"),
])
def test_bad_pool_input_is_a_4xx_naming_the_field_and_changes_nothing(client, image, body, field):
    r = client.post("/api/v1/pools", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == field and field in r.json()["detail"]
    assert client.get("/api/v1/pools").json() == []


def test_unknown_objects_are_404_and_duplicates_409(client, image):
    assert client.get("/api/v1/pools/none").status_code == 404
    assert client.get("/api/v1/desktops/none").status_code == 404
    assert client.post("/api/v1/desktops/none/reboot").status_code == 404
    assert client.get("/api/v1/images/none").status_code == 404
    assert client.patch("/api/v1/pools/none", json={"size": 1}).status_code == 404
    body = {"name": "sales", "image": "busybox-desktop", "size": 0}
    assert client.post("/api/v1/pools", json=body).status_code == 201
    r = client.post("/api/v1/pools", json=body)
    assert r.status_code == 409 and r.json()["field"] == "name"
    r = client.post("/api/v1/images", json={"recipe": "../etc"})
    assert r.status_code == 422 and r.json()["field"] == "recipe"


def test_openapi_documents_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/images", "/api/v1/pools", "/api/v1/pools/{name}", "/api/v1/desktops/{name}/rebuild"} <= set(paths)


def test_a_change_wakes_the_reconciler_once_it_is_committed(client, ctx):
    """The reconciler is woken to act on an admin's change at once: woken before the change is
    committed, its pass sees the old world and the change waits a whole period (2 s)."""
    seen: list[int | None] = []

    class Wake:
        def set(self) -> None:
            with session_scope(ctx.engine) as session:
                pool = pools_db.get_by_name(session=session, name="sales")
                seen.append(None if pool is None else pool.target_size)

    client.app.state.reconciler = SimpleNamespace(wake=Wake())
    assert client.post("/api/v1/images", json={"recipe": "busybox-desktop"}).status_code == 201
    r = client.post("/api/v1/pools", json={"name": "sales", "image": "busybox-desktop", "size": 2})
    assert r.status_code == 201
    assert client.patch("/api/v1/pools/sales", json={"size": 3}).status_code == 200
    assert seen == [2, 3]
