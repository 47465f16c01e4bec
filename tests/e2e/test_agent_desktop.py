"""An agent of the Samba test domain signs in in Chromium and works in a real browser desktop that
was cloned from a saved template: the page the policy names is on the screen, typing changes it,
and the shortcuts that reach a shell or another console on a careless desktop change nothing."""

from __future__ import annotations

import base64
import io
import time
from dataclasses import replace

import pytest

from controlplane.domain.groups import group_ref
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import create_app, tls_files
from controlplane.services import audit, images, policies, pools
from controlplane.services.reconciler import Reconciler
from tests.e2e.conftest import Server
from tests.e2e.test_portal import sign_in

GREEN = (0x0B, 0x7A, 0x3E)  # knowledge.html's header: the page this policy names, not the image's default
KNOWLEDGE = "file:///usr/share/shiftdesk/pages/knowledge.html"


def policy(agents_dn: str) -> str:
    return f"""
name: floor-agents
bind:
  groups: ["{agents_dn}"]
  pools: [floor]
apps:
  allow: [firefox-esr]
browser:
  start_page: {KNOWLEDGE}
"""


def frame(page) -> bytes:
    """The desktop's pixels as the canvas holds them (PNG), without the portal's watermark, which
    sits above the canvas and shows the time to the second."""
    url = page.evaluate("document.querySelector('#screen canvas').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def green_share(page) -> float:
    from PIL import Image  # noqa: PLC0415 - only the e2e tests need Pillow

    shot = Image.open(io.BytesIO(frame(page))).convert("RGB")
    pixels = list(shot.getdata())
    near = sum(1 for r, g, b in pixels if abs(r - GREEN[0]) + abs(g - GREEN[1]) + abs(b - GREEN[2]) < 30)
    return near / len(pixels)


def changed_share(a: bytes, b: bytes) -> float:
    """Share of pixels that differ between two frames."""
    from PIL import Image, ImageChops  # noqa: PLC0415 - only the e2e tests need Pillow

    one, two = (Image.open(io.BytesIO(x)).convert("RGB") for x in (a, b))
    if one.size != two.size:
        return 1.0
    diff = ImageChops.difference(one, two).convert("L").point(lambda v: 255 if v else 0)
    return diff.histogram()[255] / (one.size[0] * one.size[1])


CARET = 0.0005  # the text field's blinking caret: a few dozen pixels of a 1280x800 screen
TYPED = 0.0009  # "refund policy" in the search field: about 0.12 % of the screen (measured)


def settled(page, quiet_ms: int = 1500, timeout_s: float = 60) -> bytes:
    """The frame once nothing but the caret has changed for QUIET_MS."""
    deadline = time.monotonic() + timeout_s
    last = frame(page)
    while time.monotonic() < deadline:
        page.wait_for_timeout(quiet_ms)
        now = frame(page)
        if changed_share(last, now) < CARET:
            return now
        last = now
    raise AssertionError("the screen never settled")


@pytest.fixture
def floor(real_ctx, real_settings, ad):
    real_ctx.directory = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                                       bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert))
    real_ctx.auth = replace(real_ctx.auth, admin_group=group_ref(ad.groups["cc-admins"]))
    image = images.build(real_ctx, "agent-desktop", actor="test")
    policies.apply(real_ctx, {"floor.yaml": policy(ad.groups["cc-agents"])}, actor="test")
    pools.create(real_ctx, name="floor", image="agent-desktop", size=1, memory_mib=image.manifest["memory_mib"],
                 vcpus=image.manifest["vcpus"], groups=[ad.groups["cc-agents"]], actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=900), "the agent desktop never became ready"
    finally:
        rec.close()
    cert, key = tls_files(real_settings)
    with Server(create_app(real_settings, real_ctx), cert, key) as server:
        server.ctx, server.ad = real_ctx, ad
        yield server


@pytest.mark.timeout(1500)
def test_an_agent_works_in_a_cloned_browser_desktop_that_shortcuts_cannot_escape(browser, floor, tmp_path):
    restored = audit.recent(floor.ctx, action="desktop.restore", limit=10)
    assert restored, "the desktop was booted, not restored from a template"
    page, _ = sign_in(browser, floor, "alice")
    try:
        page.wait_for_selector("#status:has-text('Connected')", timeout=60000)
    except Exception:
        raise AssertionError(f"portal status: {page.locator('#status').text_content()!r}") from None
    deadline = time.monotonic() + 120
    while green_share(page) < 0.02:  # the header band of the policy's page
        assert time.monotonic() < deadline, "the page the policy names never showed"
        page.wait_for_timeout(1000)

    before = settled(page)
    (tmp_path / "before.png").write_bytes(before)  # kept by pytest for a look after a failure
    page.locator("#screen canvas").click(position={"x": 400, "y": 200})
    page.keyboard.type("refund policy", delay=150)  # a person's pace: a TCG guest lags behind a burst
    after_typing = settled(page, quiet_ms=4000)
    (tmp_path / "after-typing.png").write_bytes(after_typing)
    assert changed_share(before, after_typing) > TYPED, "typing did not change the page"

    # Alt+PrintScreen is SysRq: with a key after it the kernel would reboot or dump, if it listened
    for shortcut in ("Control+Alt+F2", "Control+Alt+t", "Alt+F2", "Alt+PrintScreen", "Control+Alt+F1"):
        page.keyboard.press(shortcut)
        page.wait_for_timeout(1500)
    after_shortcuts = settled(page, quiet_ms=4000)
    (tmp_path / "after-shortcuts.png").write_bytes(after_shortcuts)
    assert changed_share(after_shortcuts, after_typing) < CARET, "a shortcut changed what is on the screen"
    assert green_share(page) >= 0.02
