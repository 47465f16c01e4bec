"""An agent of the Samba test domain signs in in Chromium and works in a real browser desktop that
was cloned from a saved template, on the desktop network with the real resolver and Squid in
front of a namespace internet (bench/netlab.py):
- the page the policy names is on the screen, typing changes it, and the shortcuts that reach a
  shell or another console on a careless desktop change nothing;
- Firefox reaches the CRM the policy allows, a name it does not allow shows nothing, and the
  refusal is audited with the agent's name.
Both tests share one desktop (booting an agent desktop's template takes minutes under TCG)."""

from __future__ import annotations

import base64
import io
import secrets
import shutil
import tempfile
import time
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from bench.netlab import Internet, purge
from controlplane.config import Settings
from controlplane.domain.groups import group_ref
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import build_context, create_app, make_resolver, tls_files
from controlplane.services import audit, desktops, images, policies, pools
from controlplane.services.reconciler import Reconciler
from tests.e2e.conftest import Server
from tests.e2e.test_portal import sign_in
from tests.integration.conftest import ROOT, libvirt_available
from tests.integration.conftest import purge as purge_libvirt

GREEN = (0x0B, 0x7A, 0x3E)  # knowledge.html's header: the page this policy names, not the image's default
ORANGE = (0xD3, 0x54, 0x00)  # the lab CRM's page (bench/netlab.py)
KNOWLEDGE = "file:///usr/share/shiftdesk/pages/knowledge.html"


def policy(agents_dn: str) -> str:
    return f"""
name: floor-agents
bind:
  groups: ["{agents_dn}"]
  pools: [floor]
apps:
  allow: [firefox-esr]
domains:
  allow: ["crm.example.com"]
browser:
  start_page: {KNOWLEDGE}
"""


def frame(page) -> bytes:
    """The desktop's pixels as the canvas holds them (PNG), without the portal's watermark, which
    sits above the canvas and shows the time to the second."""
    url = page.evaluate("document.querySelector('#screen canvas').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def share_of(page, colour: tuple[int, int, int]) -> float:
    from PIL import Image  # noqa: PLC0415 - only the e2e tests need Pillow

    shot = Image.open(io.BytesIO(frame(page))).convert("RGB")
    pixels = list(shot.getdata())
    near = sum(1 for r, g, b in pixels if abs(r - colour[0]) + abs(g - colour[1]) + abs(b - colour[2]) < 30)
    return near / len(pixels)


def changed_share(a: bytes, b: bytes) -> float:
    """Share of pixels that differ between two frames."""
    from PIL import Image, ImageChops  # noqa: PLC0415 - only the e2e tests need Pillow

    one, two = (Image.open(io.BytesIO(x)).convert("RGB") for x in (a, b))
    if one.size != two.size:
        return 1.0
    diff = ImageChops.difference(one, two).convert("L").point(lambda v: 255 if v else 0)
    return diff.histogram()[255] / (one.size[0] * one.size[1])


SEARCH_FIELD = (32, 240, 752, 287)  # knowledge.html's search field at 1280x800: left, top, right, bottom


def changed_box(a: bytes, b: bytes) -> tuple[int, int, int, int] | None:
    """The smallest box holding every pixel that differs between two frames, None if none does."""
    from PIL import Image, ImageChops  # noqa: PLC0415 - only the e2e tests need Pillow

    one, two = (Image.open(io.BytesIO(x)).convert("RGB") for x in (a, b))
    if one.size != two.size:
        return (0, 0, *max(one.size, two.size))
    return ImageChops.difference(one, two).getbbox()


def inside(box: tuple[int, int, int, int], area: tuple[int, int, int, int], margin: int = 4) -> bool:
    """Whether BOX lies within AREA grown by MARGIN pixels (a focus ring is drawn just outside)."""
    return (box[0] >= area[0] - margin and box[1] >= area[1] - margin
            and box[2] <= area[2] + margin and box[3] <= area[3] + margin)


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


def diagnosis(ctx) -> str:
    """What the host saw: leases, the resolver's refusals, the proxy's log."""
    state = ctx.network.state_dir
    leases = (state / "dhcp" / "leases").read_text() if (state / "dhcp" / "leases").exists() else "(none)"
    refused = [(e["detail"].get("name"), e["detail"].get("rule")) for e in audit.recent(ctx, action="egress.refused")]
    cache_log = (state / "squid" / "cache.log").read_text()[-1500:]
    return f"leases: {leases!r}; refused: {refused}; squid: {cache_log}"


@pytest.fixture(scope="module")
def floor(ad):
    """One agent desktop on the desktop network, alice's pool; the resolver; the portal."""
    if not libvirt_available():
        pytest.fail("qemu:///system is not reachable: run scripts/setup-host.sh (make test does)")
    parent = Path(tempfile.mkdtemp(prefix="shiftdesk-it-", dir="/var/tmp"))
    parent.chmod(0o711)  # QEMU (libvirt-qemu) must search the path to DATA_DIR
    inet = Internet("ee" + secrets.token_hex(3))
    settings = Settings(data_dir=parent / "data", instance=f"it{secrets.token_hex(3)}",
                        images_dir=ROOT / "images", cache_dir=ROOT / ".cache", libvirt={"uri": "qemu:///system"},
                        reconciler={"boot_timeout_s": 600, "parallelism": 4},
                        network={"enabled": True, "subnet": IPv4Network(f"10.239.{secrets.randbelow(200) + 20}.0/24"),
                                 "upstream_dns": [inet.far_side]})
    ctx = build_context(settings)
    ctx.directory = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                                  bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert))
    ctx.auth = replace(ctx.auth, admin_group=group_ref(ad.groups["cc-admins"]))
    resolver = None
    try:
        inet.start()
        image = images.build(ctx, "agent-desktop", actor="test")
        policies.apply(ctx, {"floor.yaml": policy(ad.groups["cc-agents"])}, actor="test")
        pools.create(ctx, name="floor", image="agent-desktop", size=1, memory_mib=image.manifest["memory_mib"],
                     vcpus=image.manifest["vcpus"], groups=[ad.groups["cc-agents"]], actor="test")
        rec = Reconciler(ctx)
        try:
            assert rec.run_until_converged(timeout=900), "the agent desktop never became ready"
        finally:
            rec.close()
        resolver = make_resolver(ctx, settings)
        resolver.start()
        assert resolver.ready.wait(10), "the resolver did not start"
        cert, key = tls_files(settings)
        with Server(create_app(settings, ctx), cert, key) as server:
            server.ctx, server.ad = ctx, ad
            yield server
    finally:
        if resolver is not None:
            resolver.stop()
        purge_libvirt(settings)
        if ctx.network is not None:
            ctx.network.remove()
        inet.stop()
        purge(settings.instance)
        shutil.rmtree(parent, ignore_errors=True)


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
    while share_of(page, GREEN) < 0.02:  # the header band of the policy's page
        assert time.monotonic() < deadline, "the page the policy names never showed"
        page.wait_for_timeout(1000)

    before = settled(page)
    (tmp_path / "before.png").write_bytes(before)  # kept by pytest for a look after a failure
    canvas = page.locator("#screen canvas")
    box = canvas.bounding_box()
    assert box is not None
    # the search field's middle (knowledge.html at 1280x800: x 32-752, y 240-287), wherever the
    # portal's scaling puts it on the canvas
    canvas.click(position={"x": box["width"] * 390 / 1280, "y": box["height"] * 263 / 800})
    page.keyboard.type("refund policy", delay=150)  # a person's pace: a TCG guest lags behind a burst
    deadline = time.monotonic() + 90  # a busy TCG guest may draw the text many seconds later
    while changed_share(before, frame(page)) <= TYPED and time.monotonic() < deadline:
        page.wait_for_timeout(1000)
    after_typing = settled(page, quiet_ms=4000)
    (tmp_path / "after-typing.png").write_bytes(after_typing)
    assert changed_share(before, after_typing) > TYPED, "typing did not change the page"

    # Alt+PrintScreen is SysRq: with a key after it the kernel would reboot or dump, if it listened
    for shortcut in ("Control+Alt+F2", "Control+Alt+t", "Alt+F2", "Alt+PrintScreen", "Control+Alt+F1"):
        page.keyboard.press(shortcut)
        page.wait_for_timeout(1500)
    after_shortcuts = settled(page, quiet_ms=4000)
    (tmp_path / "after-shortcuts.png").write_bytes(after_shortcuts)
    # A shell, a run dialog or another console would change the screen outside the search field;
    # the field itself may lose its caret or focus ring (CI once saw 817 pixels change there)
    moved = changed_box(after_typing, after_shortcuts)
    assert moved is None or inside(moved, SEARCH_FIELD), f"a shortcut changed the screen at {moved}"
    assert share_of(page, GREEN) >= 0.02


@pytest.mark.timeout(900)
def test_firefox_reaches_the_allowed_crm_and_nothing_else(browser, floor, tmp_path):
    """Pages are opened the way the broker opens a start page (over the host channel): typing
    into Firefox's address bar through noVNC under TCG loses keys to the page (Ctrl+L reaches
    the page first, ':' needs Shift), which tests the keyboard path, not the network."""
    page, _ = sign_in(browser, floor, "alice")
    page.wait_for_selector("#status:has-text('Connected')", timeout=60000)
    (desktop,) = [row.name for row, _ in desktops.list_all(floor.ctx) if row.assigned_to == "alice"]
    assert floor.ctx.hypervisor.show_page(desktop, "http://crm.example.com/")
    deadline = time.monotonic() + 180
    while share_of(page, ORANGE) < 0.2:
        if time.monotonic() > deadline:
            (tmp_path / "no-crm.png").write_bytes(frame(page))  # kept by pytest for a look
            raise AssertionError(f"the CRM page never showed; {diagnosis(floor.ctx)}")
        page.wait_for_timeout(1000)

    assert floor.ctx.hypervisor.show_page(desktop, "http://forbidden.example.org/")
    deadline = time.monotonic() + 180
    while share_of(page, ORANGE) > 0.05:  # the forbidden name's tab comes to the front, empty
        if time.monotonic() > deadline:
            (tmp_path / "forbidden.png").write_bytes(frame(page))
            raise AssertionError("the forbidden name showed the CRM's (shared) content, or never opened")
        page.wait_for_timeout(1000)
    deadline = time.monotonic() + 30
    while True:
        refused = [e for e in audit.recent(floor.ctx, limit=500, action="egress.refused")
                   if e["detail"].get("name") == "forbidden.example.org"]
        if refused:
            break
        assert time.monotonic() < deadline, "the refusal was never audited"
        time.sleep(1)
    assert refused[0]["actor"] == "alice"
