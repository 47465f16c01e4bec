"""The agent desktop on real QEMU: a template boots Firefox once and is saved; two clones restored
from it become two desktops (names, machine-ids, random state, disks), confirmed over the host
channel by the in-guest agent, each applying the app allowlist sent to it. On one of them the app
allowlist is then enforced by the image's fapolicyd and apply-apps: an app outside the list does
not start when the agent asks for it (the keyboard's calculator key) and the denial reaches the
host; a new list lets it start; a list with a broken signature is refused and the desktop
quarantined. One test, because the template's boot is the expensive part (minutes under TCG)."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from controlplane.domain.app_policy import AppPolicy, sign
from controlplane.domain.ports import DesktopSpec, TemplateKey
from controlplane.services import images
from controlplane.services.templates import boot_image

KEY_CALC = 140  # Linux input keycode of a keyboard's calculator key (X: XF86Calculator)
GALCULATOR = "/usr/bin/galculator"


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


def screenshot(name: str, out: Path) -> bytes:
    subprocess.run(["virsh", "-c", "qemu:///system", "screenshot", name, str(out)], check=True, capture_output=True)
    return out.read_bytes()


def press_calculator_key(hv, name: str) -> None:
    hv.conn.lookupByName(name).sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 100, [KEY_CALC], 1, 0)


def denials_of(hv, path: str, seen: list) -> int:
    seen.extend(hv.app_denials())
    return sum(d.count for d in seen if d.path == path)


def runs_exactly_the_apps_its_signed_list_allows(hv, key, name: str, scratch: Path) -> None:
    """NAME applies revision 1 (Firefox only) when this starts."""
    seen: list = []
    press_calculator_key(hv, name)
    wait(lambda: denials_of(hv, GALCULATOR, seen) > 0, 60, "the calculator was not denied (or not reported)")

    before = screenshot(name, scratch / "before.ppm")
    assert hv.deliver_apps(name, sign(key, AppPolicy.of(name, 2, {"firefox-esr", "galculator"})))
    wait(lambda: hv.links.state(name).apps_applied == 2 or hv.links.state(name).quarantined, 120, "list 2 not applied")
    denied_so_far = denials_of(hv, GALCULATOR, seen)
    press_calculator_key(hv, name)
    wait(lambda: screenshot(name, scratch / "after.ppm") != before, 90, "the calculator never showed up")
    time.sleep(6)  # the guest reports denials every 5 s
    assert denials_of(hv, GALCULATOR, seen) == denied_so_far

    third = sign(key, AppPolicy.of(name, 3, {"firefox-esr"}))
    broken = dataclasses.replace(third, signature=bytes([third.signature[0] ^ 1]) + third.signature[1:])
    assert hv.deliver_apps(name, broken)
    wait(lambda: hv.links.state(name).quarantined is not None, 60, "a broken signature was not refused")
    assert "bad-signature" in (hv.links.state(name).quarantined or "")
    assert hv.list_desktops()[name].quarantined and not hv.is_ready(name)


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


@pytest.mark.timeout(1500)
def test_two_clones_of_the_agent_desktop_are_two_machines_that_run_only_allowed_apps(real_ctx, tmp_path):
    hv = real_ctx.hypervisor
    agent_image = images.build(real_ctx, "agent-desktop", actor="test")
    image = boot_image(agent_image)
    key = TemplateKey(agent_image.id, agent_image.manifest["memory_mib"], agent_image.manifest["vcpus"])
    hv.build_template(key, image)
    wait(lambda: hv.list_templates()[key].ready, 600, "the template never showed its browser")  # as boot_timeout_s
    hv.save_template(key)

    names = [f"sd-{real_ctx.instance}-floor-00000{i}" for i in (1, 2)]
    for i, name in enumerate(names):
        hv.restore_clone(DesktopSpec(name=name, pool="floor", desktop_id=i + 1, image=image,
                                     memory_mib=key.memory_mib, vcpus=key.vcpus, template=key,
                                     join_secret=f"join-secret-of-{name}"))
    try:
        # every clone looked at on every poll, as the reconciler does (a generator would stop at the
        # first clone not ready, and the second would not even be sent its identity meanwhile)
        wait(lambda: all([ready_with_apps(hv, real_ctx.app_signer, n) for n in names]), 90, "")
    except AssertionError:
        raise AssertionError("a clone never confirmed its identity and applied its app allowlist in 90 s "
                             f"(the reconciler's deadline): {[hv.links.state(n) for n in names]}") from None
    states = [hv.links.state(n) for n in names]
    assert all(s.confirmed and s.ready and s.quarantined is None for s in states)
    assert states[0].rng_probe != states[1].rng_probe  # the template's random state is not shared
    seen = hv.list_desktops()
    assert all(seen[n].cloned and seen[n].ready for n in names)
    runs_exactly_the_apps_its_signed_list_allows(hv, real_ctx.app_signer, names[1], tmp_path)

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
