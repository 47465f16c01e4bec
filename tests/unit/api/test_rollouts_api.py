"""Rollouts over HTTP: admins start, watch and roll back; agents cannot; bad input names the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.main import create_app
from controlplane.services import images, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import AGENTS, USERS


def login(c: TestClient, user: str) -> dict[str, str]:
    r = c.post("/api/v1/auth/login", json={"username": user, "password": USERS[user][0]})
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture
def api(ctx, settings, image):
    ctx.builder.variant = "2"
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=2, groups=[AGENTS], actor="t")
    with TestClient(create_app(settings, ctx)) as c:
        yield c


def passes(ctx, n):
    rec = Reconciler(ctx)
    for _ in range(n):
        rec.pass_once()
    rec.close()


def test_an_admin_starts_watches_and_rolls_back(api, ctx):
    admin = login(api, "carol")
    passes(ctx, 6)
    r = api.post("/api/v1/pools/sales/rollouts", headers=admin,
                 json={"image": "busybox-desktop:2", "canary": "50%", "soak_s": 3600,
                       "thresholds": {"failure_rate": 0.1}})
    assert r.status_code == 201, r.text
    assert (r.json()["state"], r.json()["to_image"], r.json()["thresholds"]["failure_rate"]) == \
        ("canary", "busybox-desktop:2", 0.1)
    passes(ctx, 4)
    assert api.get("/api/v1/pools/sales/rollout", headers=admin).json()["desktops"] == {"old": 1, "new": 1}
    r = api.post("/api/v1/pools/sales/rollout/rollback", headers=admin, json={"reason": "softphone broken"})
    assert r.status_code == 200 and r.json()["state"] == "rolled_back"
    with session_scope(ctx.engine) as session:
        trail = {(e.action, e.actor) for e in audit.list_recent(session=session, limit=500)}
    assert {("rollout.start", "carol"), ("rollout.rolled_back", "carol")} <= trail


def test_agents_cannot_roll_out(api):
    agent = login(api, "alice")
    assert api.post("/api/v1/pools/sales/rollouts", headers=agent, json={"image": "busybox-desktop:2"}
                    ).status_code == 403
    assert api.get("/api/v1/pools/sales/rollout", headers=agent).status_code == 403


@pytest.mark.parametrize("body,field", [
    ({"image": "busybox-desktop:2", "canary": "0"}, "canary"),
    ({"image": "busybox-desktop:2", "batch": 0}, "batch"),
    ({"image": "busybox-desktop:2", "thresholds": {"drop_rate": 2}}, "drop_rate"),
    ({"image": "busybox-desktop:2", "thresholds": {"colour": 1}}, "colour"),
    ({"image": "busybox-desktop:1"}, "image"),
    ({"image": "nope"}, "image"),
])
def test_bad_rollout_input_is_a_4xx_naming_the_field_and_changes_nothing(api, body, field):
    admin = login(api, "carol")
    r = api.post("/api/v1/pools/sales/rollouts", headers=admin, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["field"] and field in r.json()["detail"], r.json()
    assert api.get("/api/v1/pools/sales/rollout", headers=admin).status_code in (400, 422)  # none started
