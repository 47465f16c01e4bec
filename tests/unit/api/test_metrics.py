"""Metrics and health for the operator's monitoring: /metrics in Prometheus format with the
desktops by pool, host and state, live sessions, audit writes and the latencies measured in this
process, never a user's name; /readyz says what is wrong when the process should get no traffic."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.db.engine import make_engine
from controlplane.errors import AuthFailed, TemporaryError
from controlplane.main import create_app
from controlplane.services import broker, pools, telemetry
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import SALES


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def client(ctx, settings):
    with TestClient(create_app(settings, ctx)) as c:
        yield c


def test_metrics_show_desktops_by_pool_host_and_state_and_what_happened(client, ctx, image):
    before = samples(client.get("/metrics").text)
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, groups=[SALES], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    broker.connect(ctx, Claims(sub="alice", role="agent", groups=(SALES,), jti="x", exp=0), "sales")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    now = samples(response.text)
    host = next(dict(labels)["host"] for name, labels in now if name == "shiftdesk_desktops")
    assert now[("shiftdesk_desktops", (("host", host), ("pool", "sales"), ("state", "in_use")))] == 1
    assert now[("shiftdesk_desktops", (("host", host), ("pool", "sales"), ("state", "ready")))] == 1
    assert now[("shiftdesk_connect_seconds_count", ())] == before.get(("shiftdesk_connect_seconds_count", ()), 0) + 1
    assert now[("shiftdesk_reconcile_pass_seconds_count", ())] > before[("shiftdesk_reconcile_pass_seconds_count", ())]
    assert now[("shiftdesk_provisioning_seconds_count", ())] == before[("shiftdesk_provisioning_seconds_count", ())] + 2
    assert now[("shiftdesk_audit_events_total", ())] > before[("shiftdesk_audit_events_total", ())]
    assert now[("shiftdesk_live_sessions", ())] == 0
    assert "alice" not in response.text


def test_readyz_is_ok_until_the_database_stops_answering(client, ctx):
    assert client.get("/readyz").json() == {"status": "ok", "problems": []}
    ctx.engine = make_engine("postgresql+psycopg://nobody@/gone?host=/nonexistent-dir")  # nothing listens
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["problems"] == ["database: OperationalError"]
    assert client.get("/healthz").status_code == 200  # alive, just not ready


class Flaky:
    manages_computers = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    def authenticate(self, username: str, password: str):
        raise self.error


def errors_of(operation: str) -> float:
    return samples(generate_latest(REGISTRY).decode()).get(
        ("shiftdesk_directory_errors_total", (("operation", operation),)), 0)


def test_directory_failures_are_counted_but_a_refused_password_is_an_answer():
    before = errors_of("authenticate")
    for error in (AuthFailed("bad password"), TemporaryError("directory down", delay=5)):
        with pytest.raises(type(error)):
            telemetry.MeasuredDirectory(Flaky(error)).authenticate("alice", "pw")
    assert errors_of("authenticate") == before + 1


def test_metrics_show_each_pools_rollout_state_and_desktops_by_version(client, ctx, image):
    from controlplane.services import images, rollouts

    ctx.builder.variant = "2"
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=2, groups=[SALES], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rollouts.start(ctx, "sales", image="busybox-desktop:2", soak_s=3600, actor="t")
    for _ in range(4):
        rec.pass_once()
    rec.close()
    got = samples(client.get("/metrics").text)
    assert got[("shiftdesk_rollout_state", (("pool", "sales"), ("state", "canary")))] == 1
    assert got[("shiftdesk_rollout_desktops", (("pool", "sales"), ("version", "new")))] == 1
    assert got[("shiftdesk_rollout_desktops", (("pool", "sales"), ("version", "old")))] == 1
    rollouts.roll_back(ctx, "sales", actor="t")
    got = samples(client.get("/metrics").text)
    assert got[("shiftdesk_rollout_state", (("pool", "sales"), ("state", "rolled_back")))] == 1
    assert not any(name == "shiftdesk_rollout_desktops" for name, _ in got)
