"""The agent desktop on real QEMU: a template boots Firefox once and is saved; two clones restored
from it become two desktops (names, machine-ids, random state, disks), confirmed over the host
channel by the in-guest agent, each applying the app allowlist sent to it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from controlplane.domain.app_policy import AppPolicy, sign
from controlplane.domain.ports import DesktopSpec, TemplateKey
from controlplane.services import images
from controlplane.services.templates import boot_image


@pytest.fixture
def agent_image(real_ctx):
    return images.build(real_ctx, "agent-desktop", actor="test")


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def ready_with_apps(hv, key, name: str) -> bool:
    """Ready as the reconciler sees it: identity confirmed (is_ready sends it), session up, and
    the app allowlist sent to it applied (services/apps.py sends one every pass)."""
    if hv.is_ready(name):
        return True
    hv.deliver_apps(name, sign(key, AppPolicy.of(name, 1, {"firefox-esr"})))
    return False


def file_in_overlay(hv, name: str, path: str, scratch: Path) -> str | None:
    """Read PATH from the desktop's disk, offline (debugfs on a raw copy of its whole chain)."""
    overlay = hv._pool().storageVolLookupByName(f"{name}.qcow2").path()
    raw = scratch / f"{name}.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", overlay, str(raw)], check=True, capture_output=True)
    try:  # the guest's last writes may sit in the ext4 journal only: replay it as a mount would
        subprocess.run(["e2fsck", "-y", "-E", "journal_only", str(raw)], capture_output=True, check=False)
        done = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=False)
    finally:
        raw.unlink()
    return done.stdout if done.returncode == 0 and "not found" not in done.stderr else None


def test_two_clones_of_the_agent_desktop_are_two_machines(real_ctx, agent_image, tmp_path):
    hv = real_ctx.hypervisor
    image = boot_image(agent_image)
    key = TemplateKey(agent_image.id, agent_image.manifest["memory_mib"], agent_image.manifest["vcpus"])
    hv.build_template(key, image)
    wait(lambda: hv.list_templates()[key].ready, 300, "the template never showed its browser")
    hv.save_template(key)

    names = [f"sd-{real_ctx.instance}-floor-00000{i}" for i in (1, 2)]
    for i, name in enumerate(names):
        hv.restore_clone(DesktopSpec(name=name, pool="floor", desktop_id=i + 1, image=image,
                                     memory_mib=key.memory_mib, vcpus=key.vcpus, template=key,
                                     join_secret=f"join-secret-of-{name}"))
    began = time.monotonic()
    wait(lambda: all(ready_with_apps(hv, real_ctx.app_signer, n) for n in names), 60,
         "a clone never confirmed its identity and applied its app allowlist")
    confirmed_in = time.monotonic() - began
    states = [hv.links.state(n) for n in names]
    assert all(s.confirmed and s.ready and s.quarantined is None for s in states)
    assert states[0].rng_probe != states[1].rng_probe  # the template's random state is not shared
    seen = hv.list_desktops()
    assert all(seen[n].cloned and seen[n].ready for n in names)
    assert confirmed_in < 60

    for name in names:
        hv.destroy(name)  # the agent fsyncs the secret before it confirms
    secrets = [file_in_overlay(hv, n, "/var/lib/shiftdesk-agent/join-secret", Path("/var/tmp")) for n in names]
    assert secrets == [f"join-secret-of-{n}" for n in names]  # each wrote its own, in its own overlay
    machine_ids = [file_in_overlay(hv, n, "/etc/machine-id", Path("/var/tmp")) for n in names]
    assert machine_ids[0] and machine_ids[1] and machine_ids[0] != machine_ids[1]

    hv.undefine(names[0])
    hv.delete_overlay(names[0])
    assert hv.list_templates()[key].saved and names[1] in hv.list_desktops()
    hv.undefine(names[1])
    hv.delete_overlay(names[1])
    hv.remove_template(key)
