"""Kill the real reconciler process mid-step (like kill -9), restart it, and see it converge."""

from __future__ import annotations

import os
import subprocess
import sys

from controlplane.services import desktops, pools
from controlplane.services.context import CRASH_ENV
from tests.integration.conftest import tagged_domains


def reconcile(settings, crash_at: str | None = None) -> int:
    env = dict(os.environ, SHIFTDESK_DATA_DIR=str(settings.data_dir), SHIFTDESK_INSTANCE=settings.instance,
               SHIFTDESK_LIBVIRT__URI="qemu:///system", SHIFTDESK_IMAGES_DIR=str(settings.images_dir),
               SHIFTDESK_CACHE_DIR=str(settings.cache_dir))
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    done = subprocess.run([sys.executable, "-m", "controlplane.cli", "reconcile", "--timeout", "180"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode


def assert_consistent(ctx, settings):
    rows = {d.name for d, _ in desktops.list_all(ctx)}
    assert set(tagged_domains(settings.instance)) == rows
    assert ctx.hypervisor.list_overlays() == rows


def test_killed_during_provisioning_and_deletion_converges(real_ctx, real_settings, golden):
    pools.create(real_ctx, name="crash", image="busybox-desktop", size=0, actor="test")
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
