"""The admin console in Chromium, over the real API on the fake hypervisor (the console's own
behaviour; test_portal.py signs in to it through the real AD): every section loads, a rollout is
started and rolled back, a desktop's screen shows, a live session is disconnected, policy files
are diffed and applied (and a broken one refused), the audit log is searched and exported, a
policy explained; labels on every field, tabs work from the keyboard, nothing overflows a laptop screen.
Rosters: two files checked and applied at once (each pool's roster and plot shown, the apply audited
under the admin's name), a set with a broken file refused with file, line and field and nothing applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.main import create_app, tls_files
from controlplane.services import audit, desktops, images, policies, pools, scaling, sessions
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


def signed_in(browser, console):
    """Carol's console on a laptop screen, signed in and showing the pools; dialogs are accepted."""
    page = browser.new_context(ignore_https_errors=True, viewport={"width": 1366, "height": 768},
                               accept_downloads=True).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    response = page.goto(f"{console.url}/console/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.fill("#username", "carol")
    page.fill("#password", USERS["carol"][0])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#pool-rows tr:has-text('sales')")
    return page


def open_next_tab_by_keyboard(page, tab, following):
    page.focus(f"#tab-{tab}")
    page.keyboard.press("Tab")  # to the next tab
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#{following}:not([hidden])")


def search_audit(page, action):
    """Open the audit tab, let its first (unfiltered) load finish, then search for ACTION (or a
    family, `session.`) and wait until only matching events are listed."""
    page.click("#tab-audit")
    page.wait_for_selector("#audit-rows tr")
    page.fill("#audit-action", action)
    page.click("#audit-search button[type=submit]")
    page.wait_for_function("action => { const cells = [...document.querySelectorAll('#audit-rows td:nth-child(3)')];"
                           " return cells.length > 0 && cells.every(c => c.textContent.startsWith(action)); }",
                           arg=action)


def assert_labelled_and_fits(page):
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select')].filter(e => !e.labels.length)"
                               ".map(e => e.id)")
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "wider than a laptop"


def test_the_console_shows_and_acts_on_every_section(browser, console, tmp_path):
    page = signed_in(browser, console)

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
    console.ctx.builder.variant = "3"  # the next build gives other bytes: a new version
    page.click("#build button[type=submit]")
    page.wait_for_selector("#status:has-text('build of busybox-desktop: done')")
    page.wait_for_selector("#image-rows tr:has-text('busybox-desktop:3')")

    page.click("#tab-hosts")
    host = page.locator("#host-rows tr").first
    host.wait_for()
    assert "fake://" in host.text_content() and "active" in host.text_content()
    assert "/ 8" in host.text_content() and "ready" in host.text_content()  # vCPUs taken of the fake's 8

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

    search_audit(page, "session.")
    assert "carol" in page.locator("#audit-rows td:nth-child(2)").all_text_contents()
    with page.expect_download() as download:
        page.click("#audit-export")
    text = Path(download.value.path()).read_text()
    assert text.startswith("id,at,actor,action,target,detail") and "session." in text

    open_next_tab_by_keyboard(page, "pools", "desktops")
    assert_labelled_and_fits(page)


def test_the_console_applies_and_shows_rosters(browser, console, tmp_path):
    pools.create(console.ctx, name="support", image="busybox-desktop:1", size=0, actor="test")
    page = signed_in(browser, console)
    page.click("#tab-rosters")
    page.wait_for_selector("#roster-rows tr:has-text('support'):has-text('no roster')")
    demo = ROOT / "scripts" / "demo-rosters"
    files = [tmp_path / "sales.yaml", tmp_path / "support.yaml"]
    promo = '  - {name: promo, start: "2026-11-27T13:00", end: "2026-11-27T17:00", headcount: 3}\n'
    files[0].write_text((demo / "sales.yaml").read_text() + "events:\n" + promo)
    files[1].write_text((demo / "support.yaml").read_text())
    page.set_input_files("#roster-files", [str(f) for f in files])
    page.click("#roster-validate")
    page.wait_for_selector("#roster-out:has-text('Valid: rosters for sales, support')")
    assert [r.applied_at for r in scaling.list_rosters(console.ctx)] == [None, None]  # checking applies nothing

    page.click("#roster-apply button[type=submit]")
    page.wait_for_selector("#roster-out:has-text('Applied: the rosters of sales, support changed.')")
    page.wait_for_selector("#roster-rows tr:has-text('sales'):has-text('Europe/Berlin'):has-text('carol')")
    page.wait_for_selector("#roster-title:has-text('Roster of sales')")  # the first pool that changed
    assert page.locator("#roster-rows tr:has-text('support')").text_content().startswith("supportEurope/Berlin2")
    assert page.locator("#roster-title").text_content().startswith("Roster of sales, applied 2026-11-24 08:00 UTC")
    assert page.locator("#shift-rows tr").all_text_contents() == ["dayevery day08:0020:002",
                                                                  "nightevery day20:0008:00 (next day)1"]
    assert page.locator("#event-rows").text_content() == "promo2026-11-27 13:002026-11-27 17:003"
    settings = page.locator("#roster-settings").text_content()
    assert "Time zoneEurope/Berlin" in settings and "1 spare desktop, or 10% of head-count if that is more" in settings
    page.click("#roster-view summary")
    assert page.locator("#roster-yaml").text_content() == files[0].read_text()  # as written, comments too
    page.wait_for_selector("#roster-plot-title:has-text('Capacity of sales')")
    page.wait_for_function("document.getElementById('roster-plot').naturalWidth > 100")
    page.click("#roster-rows button[aria-label='Show the roster of support']")
    page.wait_for_selector("#roster-title:has-text('Roster of support')")
    page.wait_for_selector("#roster-plot-title:has-text('Capacity of support')")

    applied = {r.pool: r for r in scaling.list_rosters(console.ctx)}
    files[1].write_text(files[1].read_text().replace("max: 2", "max: 3"))  # valid, but goes with a broken one
    files[0].write_text(files[0].read_text().replace('start: "20:00"', 'start: "24:00"'))
    page.set_input_files("#roster-files", [str(f) for f in files])
    page.click("#roster-apply button[type=submit]")
    page.wait_for_selector("#roster-out.error:has-text('sales.yaml:10: shifts.1.start:')")
    page.wait_for_selector("#status:has-text('roster files: not applied')")
    assert {r.pool: r for r in scaling.list_rosters(console.ctx)} == applied
    assert scaling.show(console.ctx, "support")["roster"]["max"] == 2

    search_audit(page, "roster.apply")
    assert page.locator("#audit-rows td:nth-child(2)").all_text_contents() == ["carol", "carol"]
    assert sorted((e["actor"], e["target"]) for e in audit.recent(console.ctx, action="roster.apply")) == [
        ("carol", "sales"), ("carol", "support")]
    open_next_tab_by_keyboard(page, "policies", "rosters")
    page.wait_for_selector("#roster-view:not([hidden])")
    assert_labelled_and_fits(page)
