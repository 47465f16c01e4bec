"""An image rollout on real QEMU: a pool of two busybox desktops moves to a second version of its
image. The idle desktop is rebuilt onto the new version's disk; the one an agent works in keeps
running, untouched (same QEMU process), on the old version until the agent is done; then the
pool is whole on the new version and the rollout is done."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import libvirt

from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.rollout import RolloutState
from controlplane.services import broker, desktops, images, pools, rollouts
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import AGENTS, end_session, open_session


def second_version(ctx, v1):
    """The same files in other bytes (qcow2 re-packed with another cluster size): version 2."""
    with tempfile.TemporaryDirectory(dir=ctx.image_store) as tmp:
        built = Path(tmp)
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=32768", v1.disk_path,
                        str(built / "disk.qcow2")], check=True)
        shutil.copy(v1.kernel_path, built / "vmlinuz")
        if v1.initrd_path:
            shutil.copy(v1.initrd_path, built / "initrd.img")
        sha = subprocess.run(["sha256sum", str(built / "disk.qcow2")], capture_output=True, text=True,
                             check=True).stdout.split()[0]
        manifest = json.loads(json.dumps(v1.manifest))
        manifest["sha256"]["disk.qcow2"] = sha
        return images.register(ctx, built, manifest, actor="test")


def backing(path: str) -> str:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True,
                                     text=True, check=True).stdout)
    return info["backing-filename"]


def test_rollout_replaces_the_idle_desktop_and_waits_for_the_agent(real_ctx, golden):
    ctx = real_ctx
    v2 = second_version(ctx, golden)
    assert v2.version == 2
    pools.create(ctx, name="ro", image=f"busybox-desktop:{golden.version}", size=2, clone="cold",
                 groups=[AGENTS], actor="test")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=240), "desktops did not become ready"
    c = broker.connect(ctx, Claims("alice", "agent", (AGENTS,), "j", 0), "ro")
    conn = libvirt.open("qemu:///system")
    alices_qemu = conn.lookupByName(c.desktop).ID()

    rollouts.start(ctx, "ro", image="busybox-desktop:2", canary="1", batch=1, soak_s=0, actor="admin")
    assert rec.run_until_converged(timeout=240, until=lambda: rollouts.status(ctx, "ro").state
                                   == RolloutState.ROLLING and rollouts.status(ctx, "ro").desktops["new"] == 1)
    rows = {d.name: d for d, _ in desktops.list_all(ctx)}
    other = next(n for n in rows if n != c.desktop)
    assert rows[other].state == S.READY and backing(rows[other].disk_path) == v2.disk_path
    assert rows[c.desktop].state == S.IN_USE and backing(rows[c.desktop].disk_path) == golden.disk_path
    assert conn.lookupByName(c.desktop).ID() == alices_qemu, "the agent's desktop was restarted"

    end_session(ctx, open_session(ctx, "ro", connection=c, grace_s=0))  # alice signs off
    assert rec.run_until_converged(timeout=240, until=lambda: not rollouts.status(ctx, "ro").state.active)
    rec.close()
    r = rollouts.status(ctx, "ro")
    assert r.state == RolloutState.DONE, r
    assert r.stats["new"]["provisioned"] == 2 and r.stats["new"]["failed"] == 0
    rows = [d for d, _ in desktops.list_all(ctx)]
    assert sorted(str(d.state) for d in rows) == ["ready", "ready"]
    assert all(backing(d.disk_path) == v2.disk_path for d in rows)
