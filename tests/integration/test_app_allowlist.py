"""The app allowlist on a real agent desktop (real QEMU, the image's fapolicyd and apply-apps):
a desktop is ready only once it applies the signed list it was sent; an app outside the list
does not start when the agent asks for it (the keyboard's calculator key) and the denial reaches
the host; a new list lets it start; a list with a broken signature is refused and the desktop
quarantined."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from controlplane.domain.app_policy import AppPolicy, sign
from controlplane.domain.ports import DesktopSpec
from controlplane.services import images
from controlplane.services.templates import boot_image

KEY_CALC = 140  # Linux input keycode of a keyboard's calculator key (X: XF86Calculator)
GALCULATOR = "/usr/bin/galculator"


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def screenshot(name: str, out: Path) -> bytes:
    subprocess.run(["virsh", "-c", "qemu:///system", "screenshot", name, str(out)], check=True, capture_output=True)
    return out.read_bytes()


def press_calculator_key(hv, name: str) -> None:
    hv.conn.lookupByName(name).sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 100, [KEY_CALC], 1, 0)


def session_up(hv, name: str) -> bool:
    """Its agent confirmed the identity sent (is_ready sends it) and shows the session."""
    hv.is_ready(name)
    state = hv.links.state(name)
    return state.ready or state.quarantined is not None


def denials_of(hv, path: str, seen: list) -> int:
    seen.extend(hv.app_denials())
    return sum(d.count for d in seen if d.path == path)


@pytest.mark.timeout(1200)
def test_the_guest_runs_exactly_the_apps_its_signed_list_allows(real_ctx, tmp_path):
    hv, key = real_ctx.hypervisor, real_ctx.app_signer
    agent_image = images.build(real_ctx, "agent-desktop", actor="test")
    name = f"sd-{real_ctx.instance}-floor-000001"
    hv.create_overlay(DesktopSpec(name=name, pool="floor", desktop_id=1, image=boot_image(agent_image)))
    hv.define(DesktopSpec(name=name, pool="floor", desktop_id=1, image=boot_image(agent_image),
                          memory_mib=agent_image.manifest["memory_mib"], vcpus=agent_image.manifest["vcpus"]))
    hv.start(name)
    wait(lambda: session_up(hv, name), 600, "the session never came up")
    assert hv.links.state(name).quarantined is None
    assert not hv.is_ready(name)  # its session is up, but it enforces no list from us yet

    first = sign(key, AppPolicy.of(name, 1, {"firefox-esr", "mousepad"}))
    assert hv.deliver_apps(name, first)
    wait(lambda: hv.links.state(name).apps_applied == 1 or hv.links.state(name).quarantined, 120, "list 1 not applied")
    assert hv.is_ready(name)

    seen: list = []
    press_calculator_key(hv, name)
    wait(lambda: denials_of(hv, GALCULATOR, seen) > 0, 60, "the calculator was not denied (or not reported)")

    before = screenshot(name, tmp_path / "before.ppm")
    second = sign(key, AppPolicy.of(name, 2, {"firefox-esr", "galculator"}))
    assert hv.deliver_apps(name, second)
    wait(lambda: hv.links.state(name).apps_applied == 2 or hv.links.state(name).quarantined, 120, "list 2 not applied")
    denied_so_far = denials_of(hv, GALCULATOR, seen)
    press_calculator_key(hv, name)
    wait(lambda: screenshot(name, tmp_path / "after.ppm") != before, 90, "the calculator never showed up")
    time.sleep(6)  # the guest reports denials every 5 s
    assert denials_of(hv, GALCULATOR, seen) == denied_so_far

    third = sign(key, AppPolicy.of(name, 3, {"firefox-esr"}))
    broken = dataclasses.replace(third, signature=bytes([third.signature[0] ^ 1]) + third.signature[1:])
    assert hv.deliver_apps(name, broken)
    wait(lambda: hv.links.state(name).quarantined is not None, 60, "a broken signature was not refused")
    assert "bad-signature" in (hv.links.state(name).quarantined or "")
    assert hv.list_desktops()[name].quarantined and not hv.is_ready(name)

    hv.destroy(name)
    hv.undefine(name)
    hv.delete_overlay(name)
