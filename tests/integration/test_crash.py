"""Kill the real reconciler process mid-step (like kill -9), restart it, and see it converge."""

from __future__ import annotations

import os
import subprocess
import sys

from controlplane.domain import naming
from controlplane.services import desktops, pools
from controlplane.services.context import CRASH_ENV
from tests.conftest import database_env
from tests.integration.conftest import tagged_domains


def reconcile(settings, crash_at: str | None = None) -> int:
    env = dict(os.environ, SHIFTDESK_DATA_DIR=str(settings.data_dir), SHIFTDESK_INSTANCE=settings.instance,
               SHIFTDESK_LIBVIRT__URI="qemu:///system", SHIFTDESK_IMAGES_DIR=str(settings.images_dir),
               SHIFTDESK_CACHE_DIR=str(settings.cache_dir))
    env.pop(CRASH_ENV, None)
    env.update(database_env(settings))  # PostgreSQL in a SHIFTDESK_TEST_DB=postgresql run
    if crash_at:
        env[CRASH_ENV] = crash_at
    done = subprocess.run([sys.executable, "-m", "controlplane.cli", "reconcile", "--timeout", "180"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode


def assert_consistent(ctx, settings):
    rows = {d.name for d, _ in desktops.list_all(ctx)}
    assert {n for n in tagged_domains(settings.instance) if naming.TEMPLATE_MARK not in n} == rows
    assert ctx.hypervisor.list_overlays() == rows
    assert not list(ctx.hypervisor.run_dir.glob("*.restore"))


def test_killed_while_making_a_template_or_a_clone_converges(real_ctx, real_settings, golden):
    # each template crash point needs a template still to make: one pool (machine shape) per point
    for memory, point in ((256, "template.after-build"), (320, "template.after-save")):
        pools.create(real_ctx, name=f"clones{memory}", image="busybox-desktop", size=1, memory_mib=memory,
                     actor="test")
        assert reconcile(real_settings, crash_at=point) == 137, f"did not crash at {point}"
        assert reconcile(real_settings) == 0, f"no convergence after a crash at {point}"
        assert_consistent(real_ctx, real_settings)
    pools.scale(real_ctx, "clones256", 2, actor="test")
    assert reconcile(real_settings, crash_at="provision.after-restore") == 137
    assert reconcile(real_settings) == 0
    assert_consistent(real_ctx, real_settings)
    rows = [d for d, _ in desktops.list_all(real_ctx)]
    assert len(rows) == 3 and all(d.state == "ready" for d in rows)
    templates = real_ctx.hypervisor.list_templates()
    assert len(templates) == 2 and all(t.saved and not t.defined for t in templates.values())
    assert sorted(p.name for p in real_ctx.hypervisor.templates_dir.iterdir()) == sorted(
        f"{real_ctx.hypervisor.template_name(k)}.save" for k in templates)  # no partial file left
    for memory in (256, 320):
        pools.delete(real_ctx, f"clones{memory}", actor="test")
    assert reconcile(real_settings) == 0
    assert real_ctx.hypervisor.list_templates() == {}
    assert not tagged_domains(real_settings.instance)


def test_killed_during_provisioning_and_deletion_converges(real_ctx, real_settings, golden):
    pools.create(real_ctx, name="crash", image="busybox-desktop", size=0, clone="cold", actor="test")
    size = 0
    for point in ("provision.after-row", "provision.after-overlay", "provision.after-define",
                  "provision.after-start"):
        size += 1
        pools.scale(real_ctx, "crash", size, actor="test")
        assert reconcile(real_settings, crash_at=point) == 137, f"did not crash at {point}"
        assert reconcile(real_settings) == 0, f"no convergence after a crash at {point}"
        rows = [d for d, _ in desktops.list_all(real_ctx)]
        assert len(rows) == size and all(d.state == "ready" for d in rows), (point, rows)
        assert_consistent(real_ctx, real_settings)

    for point in ("teardown.after-undefine", "teardown.after-overlay"):
        size -= 1
        pools.scale(real_ctx, "crash", size, actor="test")
        assert reconcile(real_settings, crash_at=point) == 137, f"did not crash at {point}"
        assert reconcile(real_settings) == 0, f"no convergence after a crash at {point}"
        assert len(desktops.list_all(real_ctx)) == size
        assert_consistent(real_ctx, real_settings)

    pools.delete(real_ctx, "crash", actor="test")
    assert reconcile(real_settings, crash_at="teardown.after-undefine") == 137
    assert reconcile(real_settings) == 0
    assert desktops.list_all(real_ctx) == [] and pools.list_all(real_ctx) == []
    assert_consistent(real_ctx, real_settings)
