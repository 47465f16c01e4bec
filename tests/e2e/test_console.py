"""The admin console in Chromium, over the real API on the fake hypervisor (the console's own
behaviour; test_portal.py signs in to it through the real AD): every section loads, a rollout is
started and rolled back, a desktop's screen shows, a live session is disconnected, policy files
are diffed and applied (and a broken one refused), the audit log is searched and exported, a
policy explained; labels on every field, tabs work from the keyboard, nothing overflows a laptop screen."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.main import create_app, tls_files
from controlplane.services import desktops, images, policies, pools, sessions
from controlplane.services.reconciler import Reconciler
from tests.conftest import AGENTS, USERS, open_session
from tests.e2e.conftest import Server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def console(ctx, settings, image):
    ctx.builder.variant = "2"
    images.build(ctx, "busybox-desktop", actor="test")  # a version 2 to roll out
    policies.apply(ctx, {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}, actor="test")
    pools.create(ctx, name="sales", image="busybox-desktop:1", size=2, groups=[AGENTS], actor="test")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    live = open_session(ctx, "sales", source="192.0.2.7")
    sessions.heartbeat(ctx, live.display, limits=live.limits, period_s=2,
                       usage=sessions.Usage(bytes_from_browser=512, bytes_to_browser=65536, idle_s=3))
    cert, key = tls_files(settings)
    with Server(create_app(settings, ctx), cert, key) as server:
        server.ctx, server.desktop = ctx, live.desktop
        yield server


def test_the_console_shows_and_acts_on_every_section(browser, console, tmp_path):
    page = browser.new_context(ignore_https_errors=True, viewport={"width": 1366, "height": 768},
                               accept_downloads=True).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    response = page.goto(f"{console.url}/console/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.fill("#username", "carol")
    page.fill("#password", USERS["carol"][0])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#pool-rows tr:has-text('sales')")

    page.select_option("#rollout-pool", "sales")
    page.select_option("#rollout-image", "busybox-desktop:2")
    page.fill("#rollout-canary", "50%")
    page.click("#rollout button[type=submit]")
    page.wait_for_selector("#status:has-text('rollout of sales:')")
    assert page.locator("#status").text_content() == "rollout of sales: done", page.locator("#status").text_content()
    page.wait_for_selector("#pool-rows tr:has-text('canary to busybox-desktop:2')")
    page.click("#pool-rows button[aria-label='Roll back the rollout of sales']")
    page.wait_for_selector("#pool-rows tr:has-text('rolled_back')")

    page.click("#tab-desktops")
    page.wait_for_selector("#desktop-rows tr:has-text('alice')")
    page.click(f"#desktop-rows button[aria-label='View the screen of {console.desktop}']")
    page.wait_for_selector("#preview:not([hidden])")
    page.wait_for_function("document.getElementById('preview-img').naturalWidth === 64")

    page.click("#tab-sessions")
    row = page.locator("#session-rows tr:has-text('alice')")
    row.wait_for()
    assert "192.0.2.7" in row.text_content() and "512 / 65536" in row.text_content()
    page.click("#session-rows button[aria-label^='Disconnect alice']")
    page.wait_for_selector("#status:has-text('disconnect alice: done')")
    assert desktops.get(console.ctx, console.desktop)[0].disconnect_requested

    page.click("#tab-images")
    page.wait_for_selector("#image-rows tr:has-text('busybox-desktop:1')")
    assert "sales" in page.locator("#image-rows").text_content()

    page.click("#tab-policies")
    page.wait_for_selector("#revision-rows tr:has-text('(current)')")
    files = []  # the whole set, as policy apply takes it, with one value changed
    for example in sorted((ROOT / "policies").glob("*.yaml")):
        files.append(tmp_path / example.name)
        files[-1].write_text(example.read_text().replace("idle_timeout_minutes: 10", "idle_timeout_minutes: 12"))
    page.set_input_files("#apply-files", [str(f) for f in files])
    page.click("#apply-diff")
    page.wait_for_selector("#apply-out:has-text('session.idle_timeout_minutes: 10 -> 12')")
    page.fill("#apply-comment", "longer idle time for support")
    page.click("#apply button[type=submit]")
    page.wait_for_selector("#apply-out:has-text('Applied as revision 2')")
    page.wait_for_selector("#revision-rows tr:has-text('longer idle time for support')")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nbind:\n  groups: [g]\n  colour: red\n")
    page.set_input_files("#apply-files", str(broken))
    page.click("#apply-diff")
    page.wait_for_selector("#apply-out:has-text('colour')")
    page.fill("#explain-user", "alice")
    page.fill("#explain-pool", "sales")
    page.click("#explain button[type=submit]")
    page.wait_for_selector("#explain-out:not([hidden])")
    assert "sales-floor" in page.locator("#explain-out").text_content()

    page.click("#tab-audit")
    page.fill("#audit-action", "session.")
    page.click("#audit-search button[type=submit]")
    page.wait_for_selector("#audit-rows tr:has-text('carol')")
    assert all(a.startswith("session.") for a in page.locator("#audit-rows td:nth-child(3)").all_text_contents())
    with page.expect_download() as download:
        page.click("#audit-export")
    text = Path(download.value.path()).read_text()
    assert text.startswith("id,at,actor,action,target,detail") and "session." in text

    unlabelled = page.evaluate("[...document.querySelectorAll('input, select')].filter(e => !e.labels.length)"
                               ".map(e => e.id)")
    assert unlabelled == []
    page.focus("#tab-pools")
    page.keyboard.press("Tab")  # to the Desktops tab
    page.keyboard.press("Enter")
    page.wait_for_selector("#desktops:not([hidden])")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "wider than a laptop"
