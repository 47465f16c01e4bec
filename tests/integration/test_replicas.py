"""Two `shiftdesk serve` replicas on one PostgreSQL, sharing this machine's libvirt.

The leader is killed with SIGKILL while it provisions a pool. The other replica runs under another
hostname (its own UTS namespace), as on another machine, so it cannot tell that process is gone:
only the lease running out hands the work over. Then the pool converges with no duplicate desktop
and no orphan, every desktop is created and made ready exactly once in the audit log, nothing the
dead leader audited is lost, and an agent works on a desktop through the surviving replica's API
and gateway. Then 200 agents connect at once across two replicas and no desktop is given twice.
Always on PostgreSQL (several replicas need it), whatever SHIFTDESK_TEST_DB says."""

from __future__ import annotations

import secrets
import shutil
import signal
import ssl
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from bench.replicas import storm
from controlplane.config import Settings
from controlplane.db.engine import make_engine, session_scope
from controlplane.db.models import Desktop
from controlplane.main import build_context
from controlplane.services import audit, desktops, images, pools
from tests.integration.conftest import ROOT, libvirt_available, purge
from tests.integration.replicas import Replica, agent_token, first_update_through_gateway, wait_for
from tests.integration.test_crash import assert_consistent

LEASE_TTL_S = 6
SALES = "CN=cc-sales,OU=Groups,DC=replicas,DC=test"


@pytest.fixture
def pg_settings(postgres, pg_database):
    from tests.postgres import APP, OWNER  # noqa: PLC0415

    if not libvirt_available():
        pytest.fail("qemu:///system is not reachable: run scripts/setup-host.sh (make test does)")
    parent = Path(tempfile.mkdtemp(prefix="shiftdesk-it-", dir="/var/tmp"))
    parent.chmod(0o711)  # QEMU (libvirt-qemu) must search the path to DATA_DIR
    settings = Settings(data_dir=parent / "data", instance=f"it{secrets.token_hex(3)}",
                        images_dir=ROOT / "images", cache_dir=ROOT / ".cache", libvirt={"uri": "qemu:///system"},
                        reconciler={"boot_timeout_s": 600},
                        db={"url": postgres.url(pg_database, APP), "migrate_url": postgres.url(pg_database, OWNER)})
    yield settings
    purge(settings)
    shutil.rmtree(parent, ignore_errors=True)


def test_the_leader_killed_mid_provisioning_hands_over_with_nothing_lost_or_doubled(pg_settings, tmp_path):
    ctx = build_context(pg_settings)
    images.build(ctx, "busybox-desktop", actor="test")
    a = Replica(pg_settings, tmp_path / "a.log", lease_ttl_s=LEASE_TTL_S)
    b = None
    try:
        a.wait_up()
        wait_for("replica a to lead", lambda: a.leads(ctx.engine), 30)
        b = Replica(pg_settings, tmp_path / "b.log", hostname="replica-b", lease_ttl_s=LEASE_TTL_S)
        b.wait_up()

        pools.create(ctx, name="ha", image="busybox-desktop", size=3, clone="cold", groups=[SALES], actor="test")
        wait_for("a desktop being provisioned", lambda: any(
            d.state == "provisioning" and d.disk_path for d, _ in desktops.list_all(ctx)), 120, every=0.1)
        before = {e["id"]: e for e in audit.recent(ctx, limit=1000)}
        a.kill()
        killed_at = time.monotonic()
        assert any(d.state != "ready" for d, _ in desktops.list_all(ctx)), "the pool was ready before the kill"

        wait_for("replica b to take the lease over", lambda: b.leads(ctx.engine), 10 * LEASE_TTL_S)
        took_over_s = time.monotonic() - killed_at
        wait_for("the pool to be ready", lambda: [d.state for d, _ in desktops.list_all(ctx)] == ["ready"] * 3,
                 300, every=1)

        rows = [d for d, _ in desktops.list_all(ctx)]
        assert len({d.name for d in rows}) == 3
        assert_consistent(ctx, pg_settings)  # every row has its domain and overlay, and nothing else exists
        after = {e["id"]: e for e in audit.recent(ctx, limit=1000)}
        assert all(after.get(i) == e for i, e in before.items()), "an event the leader audited is gone or changed"
        for d in rows:
            for action in ("desktop.create", "desktop.ready"):
                assert sum(1 for e in after.values() if e["action"] == action and e["target"] == d.name) == 1, \
                    (d.name, action)

        token, ca = agent_token(ctx, "alice", [SALES]), pg_settings.data_dir / "tls" / "ca.pem"
        connect = httpx.post(f"{b.url}/api/v1/me/pools/ha/connect", headers={"Authorization": f"Bearer {token}"},
                             verify=ssl.create_default_context(cafile=str(ca)), timeout=30)
        assert connect.status_code == 200, connect.text
        width, height = first_update_through_gateway(b, token, connect.json()["ticket"], ca)
        assert width > 0 and height > 0
        print(f"replica b took the lease {took_over_s:.1f} s after the kill (TTL {LEASE_TTL_S} s)")
    finally:
        a.kill()
        if b is not None:
            b.kill(signal.SIGTERM)


def test_200_simultaneous_connects_across_two_replicas_never_share_a_desktop(postgres, pg_database, tmp_path):
    """200 agents click at the same instant, each at one of two replicas (real API, broker and
    gateway processes on one PostgreSQL; synthetic directory and desktops: bench/storm_server.py),
    for 150 desktops: 150 agents get pixels, each on a desktop of their own, the other 50 are
    refused, and the database agrees."""
    from tests.postgres import APP, OWNER  # noqa: PLC0415

    db = {"url": postgres.url(pg_database, APP), "migrate_url": postgres.url(pg_database, OWNER)}
    result = storm(tmp_path / "storm", postgres, 200, 0.0, desktops=150, db=db)
    assert len(result.desktops) == 150 and result.failures == 50
    assert len(set(result.desktops)) == 150, "an agent got a desktop another agent had"
    engine = make_engine(db["url"])
    try:
        with session_scope(engine) as session:
            held = session.exec(select(Desktop.name, Desktop.assigned_to)  # type: ignore[call-overload]
                                .where(Desktop.assigned_to != None)).all()  # noqa: E711 - SQL IS NOT NULL
    finally:
        engine.dispose()
    assert len(held) == 150 and len({user for _, user in held}) == 150
    assert {name for name, _ in held} == set(result.desktops)
